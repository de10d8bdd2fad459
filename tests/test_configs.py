"""Generated configs: parse back into ModelConfig, wire up correctly, carry the flags given."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from export.errors import InvalidArgumentError
from export.repository.config import read_config
from export.repository.layout import model_names
from triton_embeddings.names import (
    CLIP_INPUT_IDS,
    DEFAULT_INT8_PIPELINE,
    DEFAULT_TEXT_PIPELINE,
    EMBEDDING,
    IMAGE,
    LABEL,
    PIXEL_VALUES,
    SCORES,
    TEXT,
    TOKEN_TYPE_IDS,
    ClipPipelineNames,
    TextPipelineNames,
)

PIPELINES = [DEFAULT_TEXT_PIPELINE, "tiny-bert", "tiny-xlm-roberta", "tiny-decoder"]


def all_configs(repository: Path) -> dict[str, mc.ModelConfig]:
    return {name: read_config(repository / name) for name in model_names(repository)}


def test_every_config_parses_and_is_batched(repository: Path) -> None:
    configs = all_configs(repository)
    assert len(configs) >= 3 * len(PIPELINES) + 6 + 8  # text pipelines, CLIP without and with labels
    for folder, config in configs.items():
        assert config.name == folder
        assert config.max_batch_size > 0, folder
        assert (repository / folder / "1").is_dir(), folder


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_ensemble_wiring(repository: Path, pipeline: str) -> None:
    names = TextPipelineNames(pipeline)
    ensemble = read_config(repository / names.ensemble)
    tokenizer = read_config(repository / names.tokenizer)
    encoder = read_config(repository / names.encoder)

    assert ensemble.platform == "ensemble"
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.input] == [(TEXT.name, mc.TYPE_STRING, [1])]
    ((output),) = ensemble.output
    assert (output.name, output.data_type) == (EMBEDDING.name, mc.TYPE_FP32)
    assert list(output.dims) == list(encoder.output[0].dims)
    steps = ensemble.ensemble_scheduling.step
    assert [step.model_name for step in steps] == [names.tokenizer, names.encoder]

    # Every tensor the tokenizer emits is one the encoder takes, all int64, and back again.
    assert set(steps[0].output_map) == {t.name for t in tokenizer.output} == {t.name for t in encoder.input}
    assert set(steps[1].input_map) == {t.name for t in encoder.input}
    assert {t.data_type for t in encoder.input} == {mc.TYPE_INT64}
    assert dict(steps[1].output_map) == {EMBEDDING.name: EMBEDDING.name}

    assert tokenizer.backend == encoder.backend == "python"
    assert all(t.allow_ragged_batch for t in encoder.input)
    assert tokenizer.max_batch_size == encoder.max_batch_size == ensemble.max_batch_size


@pytest.mark.parametrize(
    ("pipeline", "has_token_type_ids"),
    [(DEFAULT_TEXT_PIPELINE, True), ("tiny-bert", True), ("tiny-xlm-roberta", False), ("tiny-decoder", False)],
)
def test_token_type_ids_only_for_models_that_use_them(repository: Path, pipeline: str, has_token_type_ids) -> None:
    tokenizer = read_config(repository / TextPipelineNames(pipeline).tokenizer)
    assert (TOKEN_TYPE_IDS.name in {t.name for t in tokenizer.output}) == has_token_type_ids


def test_padding_and_truncation_come_from_the_model(repository: Path) -> None:
    configs = {name: read_config(repository / TextPipelineNames(name).tokenizer) for name in PIPELINES}
    params = {name: {k: v.string_value for k, v in c.parameters.items()} for name, c in configs.items()}
    assert params[DEFAULT_TEXT_PIPELINE]["max_length"] == "256"
    assert params[DEFAULT_TEXT_PIPELINE]["padding_side"] == "right"
    assert params["tiny-xlm-roberta"]["pad_token_id"] == "1"
    assert params["tiny-decoder"]["padding_side"] == "left"


def test_cli_flags_reach_the_configs_for_the_gpu_runtime(tmp_path: Path, tiny_models) -> None:
    """`python -m export text` end to end, as a user runs it, with the onnxruntime runtime."""
    repository = tmp_path / "repo"
    command = [
        sys.executable, "-m", "export", "text", str(tiny_models["tiny-bert"].path),
        "--name", "gpu-bert", "--repository", str(repository), "--runtime", "onnxruntime",
        "--max-batch-size", "16", "--instances", "2", "--tokenizer-instances", "3",
        "--max-queue-delay-us", "1234", "--max-length", "20",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "gpu-bert" in done.stdout and "min cosine" in done.stdout

    names = TextPipelineNames("gpu-bert")
    encoder = read_config(repository / names.encoder)
    tokenizer = read_config(repository / names.tokenizer)
    assert encoder.platform == "onnxruntime_onnx" and not encoder.backend
    assert encoder.default_model_filename == "model.onnx"
    assert [(g.kind, g.count) for g in encoder.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 2)]
    assert not any(t.allow_ragged_batch for t in encoder.input)  # the native backend cannot pad
    assert sorted(p.name for p in (repository / names.encoder / "1").iterdir()) == ["model.onnx"]
    assert [(g.kind, g.count) for g in tokenizer.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 3)]
    assert tokenizer.parameters["max_length"].string_value == "20"
    for config in (encoder, tokenizer, read_config(repository / names.ensemble)):
        assert config.max_batch_size == 16
    for config in (encoder, tokenizer):
        assert config.dynamic_batching.max_queue_delay_microseconds == 1234


def test_cli_flags_reach_the_configs_for_the_python_runtime(tmp_path: Path, tiny_models) -> None:
    command = [
        sys.executable, "-m", "export", "text", str(tiny_models["tiny-bert"].path), "--name", "cpu-bert",
        "--repository", str(tmp_path), "--max-batch-tokens", "300", "--intra-op-spinning",
        "--max-queue-size", "7", "--queue-timeout-ms", "5000", "--intra-op-threads", "3", "--max-wait-ms", "1500",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    names = TextPipelineNames("cpu-bert")
    encoder, tokenizer = read_config(tmp_path / names.encoder), read_config(tmp_path / names.tokenizer)
    params = {key: value.string_value for key, value in encoder.parameters.items()}
    assert (params["max_batch_tokens"], params["intra_op_spinning"], params["intra_op_threads"]) == ("300", "1", "3")
    # Queue bounds asked for bound the entry step; the encoder's queue is what admission lets in.
    policy = tokenizer.dynamic_batching.default_queue_policy
    assert (policy.max_queue_size, policy.default_timeout_microseconds) == (7, 5_000_000)
    assert not encoder.dynamic_batching.HasField("default_queue_policy")
    assert tokenizer.parameters["max_wait_ms"].string_value == "1500"
    assert tokenizer.parameters["admission_encoder"].string_value == names.encoder


def test_the_queue_policies_without_admission() -> None:
    """--max-wait-ms 0 brings back the request-counting bounds on every step; a GPU runtime
    (no admission: its encoder cannot time its own batches) has them by default."""
    from export.runtimes import ServingOptions

    for serving in (ServingOptions(max_wait_ms=0), ServingOptions(runtime="onnxruntime")):
        steps, encoders = serving.batching()
        size = encoders.max_batch_size
        for batching in (steps, encoders):
            assert (batching.max_queue_size, batching.queue_timeout_us) == (4 * size, 30_000_000), serving
        assert serving.admission("e") is None
    with pytest.raises(InvalidArgumentError, match="--max-wait-ms applies to --runtime python"):
        ServingOptions(runtime="onnxruntime", max_wait_ms=1000)


def test_python_runtime_defaults(repository: Path) -> None:
    """Length groups for token encoders only; admission in place of queue policies; one
    encoder instance with all CPUs for fp32, the CPUs split among int8 instances."""
    text = read_config(repository / TextPipelineNames(DEFAULT_TEXT_PIPELINE).encoder)
    params = {key: value.string_value for key, value in text.parameters.items()}
    assert (params["length_input"], params["max_batch_tokens"], params["intra_op_spinning"]) == (
        "attention_mask", "512", "0",
    )  # fmt: skip
    assert params["intra_op_threads"] == "all"
    int8 = read_config(repository / TextPipelineNames(DEFAULT_INT8_PIPELINE).encoder)
    assert int8.parameters["intra_op_threads"].string_value == "per_instance"
    clip_text = read_config(repository / ClipPipelineNames("clip-tiny").text_encoder)
    assert "length_input" not in clip_text.parameters  # a fixed context, no mask: nothing to group
    # Admission by work, 2 s, and no Triton queue policy (docs/reliability.md, "Overload").
    tokenizer = read_config(repository / TextPipelineNames(DEFAULT_TEXT_PIPELINE).tokenizer)
    assert tokenizer.parameters["max_wait_ms"].string_value == "2000" and params["admission"] == "1"
    for config in (text, tokenizer):
        assert not config.dynamic_batching.HasField("default_queue_policy"), config.name
    assert [g.count for g in text.instance_group] == [1]


def test_gpu_runtime_defaults(tmp_path: Path, tiny_models) -> None:
    from export.runtimes import ServingOptions
    from export.text.pipeline import TextExportOptions, export_text

    gpu = ServingOptions(runtime="onnxruntime")
    options = TextExportOptions(str(tiny_models["tiny-xlm-roberta"].path), "gpu", tmp_path, serving=gpu)
    export_text(options)
    encoder = read_config(tmp_path / "gpu_encoder")
    assert encoder.max_batch_size == 128
    assert encoder.dynamic_batching.max_queue_delay_microseconds == 500


@pytest.mark.parametrize(
    ("name", "context", "pixels"), [("clip-vit-b-32", 77, [3, 224, 224]), ("clip-tiny", 32, [3, 64, 96])]
)
def test_clip_wiring(repository: Path, clip_models, name: str, context: int, pixels: list[int]) -> None:
    names = ClipPipelineNames(name)
    text, image = read_config(repository / names.text), read_config(repository / names.image)
    assert [s.model_name for s in text.ensemble_scheduling.step] == [names.text_tokenizer, names.text_encoder]
    assert [s.model_name for s in image.ensemble_scheduling.step] == [names.image_preprocess, names.image_encoder]
    assert [(t.name, t.data_type) for t in image.input] == [(IMAGE.name, mc.TYPE_STRING)]

    tokenizer = read_config(repository / names.text_tokenizer)
    (ids,) = tokenizer.output
    assert (ids.name, ids.data_type, list(ids.dims)) == (CLIP_INPUT_IDS.name, mc.TYPE_INT32, [context])
    assert tokenizer.parameters["pad_to_length"].string_value == str(context)

    preprocess = read_config(repository / names.image_preprocess)
    (output,) = preprocess.output
    assert (output.name, list(output.dims)) == (PIXEL_VALUES.name, pixels)
    settings = json.loads(preprocess.parameters["preprocess"].string_value)
    reference = clip_models[name].model.visual.preprocess_cfg  # read from open_clip, not assumed
    for key in ("size", "mean", "std"):
        assert settings[key] == list(reference[key]), key
    for key in ("interpolation", "resize_mode", "fill_color"):
        assert settings[key] == reference[key], key

    classify = (repository / names.classify).exists()
    assert classify == (name == "clip-vit-b-32")  # only exported with labels
    if classify:
        config = read_config(repository / names.classify)
        steps = [s.model_name for s in config.ensemble_scheduling.step]
        assert steps == [names.image_preprocess, names.image_encoder, names.classifier]
        assert [o.name for o in config.output] == [LABEL.name, SCORES.name]


def test_clip_cli_for_the_gpu_runtime(tmp_path: Path, clip_models) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\n\ndog\n", encoding="utf-8")
    command = [
        sys.executable, "-m", "export", "clip", clip_models["clip-tiny"].arch, "--name", "gpu-clip",
        "--repository", str(tmp_path / "repo"), "--runtime", "onnxruntime", "--tensorrt", "--labels", str(labels),
        "--template", "a photo of {}.", "--template", "art of {}.", "--max-batch-size", "8",
        "--preprocess-instances", "3", "--no-draft",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    names = ClipPipelineNames("gpu-clip")
    assert sorted(model_names(tmp_path / "repo")) == sorted(names.models(classify=True))
    for encoder in (names.text_encoder, names.image_encoder):
        config = read_config(tmp_path / "repo" / encoder)
        assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 8
        assert config.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
        assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    preprocess = read_config(tmp_path / "repo" / names.image_preprocess)
    assert preprocess.instance_group[0].count == 3
    assert json.loads(preprocess.parameters["preprocess"].string_value)["draft"] is False
    classify = read_config(tmp_path / "repo" / names.classify)
    assert json.loads(classify.parameters["labels"].string_value) == ["cat", "dog"]
    # The classifier is an ONNX graph on the GPU's ONNX Runtime (a Python hop fewer), never on
    # TensorRT (string labels): same outputs as the ensemble's.
    classifier = read_config(tmp_path / "repo" / names.classifier)
    assert (
        classifier.platform == "onnxruntime_onnx"
        and not classifier.optimization.execution_accelerators.gpu_execution_accelerator
    )
    assert [(o.name, list(o.dims)) for o in classifier.output] == [(SCORES.name, [2]), (LABEL.name, [1])]
