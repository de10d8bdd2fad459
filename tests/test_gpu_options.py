"""GPU-side options, checked where they can be here: configs, warm-ups, fp16 graphs on the CPU,
and the TensorRT runtime's refusal on a machine without TensorRT or a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from export.errors import InvalidArgumentError, UserError
from export.repository.config import Batching, read_config
from export.runtimes import EncoderModel, ServingOptions
from export.runtimes.tensorrt import tensorrt_config, tensorrt_profile
from export.steps.writers import TokenizerSettings
from export.text.default_model import default_model_path
from export.text.pipeline import TextExportOptions, export_text
from export.tools import payloads
from export.tools.compare import cosine
from triton_embeddings.names import ATTENTION_MASK, EMBEDDING, INPUT_IDS, TOKEN_TYPE_IDS, TextPipelineNames


def test_every_encoder_is_warmed_up(repository: Path) -> None:
    encoder = read_config(repository / TextPipelineNames("all-MiniLM-L6-v2").encoder)
    (warmup,) = encoder.model_warmup
    assert warmup.batch_size == 1
    assert set(warmup.inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(list(tensor.dims) == [32] and tensor.zero_data for tensor in warmup.inputs.values())
    image = read_config(repository / "clip-tiny_image_encoder")
    assert list(image.model_warmup[0].inputs["pixel_values"].dims) == [3, 64, 96]


def test_onnxruntime_runtime_with_the_tensorrt_accelerator(tmp_path: Path, tiny_models) -> None:
    command = [
        sys.executable, "-m", "export", "text", str(tiny_models["tiny-bert"].path), "--name", "trt",
        "--repository", str(tmp_path), "--runtime", "onnxruntime", "--tensorrt", "--tensorrt-fp16",
        "--tensorrt-cache", "/models/.trt-cache", "--max-batch-size", "32",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    config = read_config(tmp_path / "trt_encoder")
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert dict(accelerator.parameters) == {
        "precision_mode": "FP16",
        "max_workspace_size_bytes": str(1 << 30),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": "/models/.trt-cache",
    }
    # Warm-ups at both ends of the shape range: the engines are built at load, not on a request.
    shapes = [(w.batch_size, list(w.inputs["input_ids"].dims)) for w in config.model_warmup]
    assert shapes == [(1, [1]), (32, [48])]


def test_tensorrt_options_belong_to_the_onnxruntime_runtime() -> None:
    with pytest.raises(InvalidArgumentError, match="apply to --runtime onnxruntime"):
        ServingOptions(runtime="python", tensorrt=True)


def test_tensorrt_runtime_says_what_is_missing(tmp_path: Path, tiny_models) -> None:
    options = TextExportOptions(str(tiny_models["tiny-bert"].path), "x", tmp_path, ServingOptions(runtime="tensorrt"))
    with pytest.raises(UserError, match=r"needs the tensorrt package .* and an NVIDIA GPU"):
        export_text(options)
    assert not (tmp_path / "x").exists()


def test_tensorrt_runtime_config() -> None:
    """The config written beside a built engine (the engine itself needs a GPU to build)."""
    inputs = [spec.with_dims(-1) for spec in (INPUT_IDS, ATTENTION_MASK)]
    encoder = EncoderModel("e", inputs, EMBEDDING.with_dims(384), Batching(64), sequence=(1, 32, 256))
    config = tensorrt_config(encoder)
    assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert [list(t.dims) for t in config.input] == [[-1], [-1]]
    assert list(config.model_warmup[0].inputs["input_ids"].dims) == [32]


def test_fp16_encoder_agrees_with_fp32(tmp_path: Path) -> None:
    """fp16 weights and activations, fp32 inputs, outputs and reductions; run here on the CPU."""
    for precision in ("fp32", "fp16"):
        export_text(TextExportOptions(str(default_model_path()), precision, tmp_path, precision=precision))
    files = {p: tmp_path / f"{p}_encoder" / "1" / "model.onnx" for p in ("fp32", "fp16")}
    assert files["fp16"].stat().st_size < 0.6 * files["fp32"].stat().st_size
    graph = onnx.load(str(files["fp16"])).graph
    assert {t.type.tensor_type.elem_type for t in [*graph.input, *graph.output]} <= {
        onnx.TensorProto.INT64,
        onnx.TensorProto.FLOAT,
    }
    settings = TokenizerSettings.from_model(tmp_path / "fp16_tokenizer")
    feeds = settings.tokenize(payloads.texts(200, seed=3), [INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS])
    fp32, fp16 = (ort.InferenceSession(str(files[p])).run(None, feeds)[0] for p in ("fp32", "fp16"))
    assert fp16.dtype == np.float32
    assert cosine(fp16, fp32).min() >= 0.999
    assert read_config(tmp_path / "fp16").parameters["pipeline"].string_value.count('"precision": "fp16"') == 1


def test_tensorrt_optimization_profile() -> None:
    inputs = [spec.with_dims(-1) for spec in (INPUT_IDS, ATTENTION_MASK)]
    encoder = EncoderModel("e", inputs, EMBEDDING.with_dims(384), Batching(64), sequence=(1, 32, 256))
    default = tensorrt_profile(encoder, ServingOptions(runtime="tensorrt"))
    assert default["input_ids"] == ([1, 1], [32, 32], [64, 256])
    narrowed = ServingOptions(runtime="tensorrt", tensorrt_batch=(1, 8, 16), tensorrt_sequence=(4, 16, 64))
    assert tensorrt_profile(encoder, narrowed)["attention_mask"] == ([1, 4], [8, 16], [16, 64])
    with pytest.raises(InvalidArgumentError, match="exceeds --max-batch-size 64"):
        tensorrt_profile(encoder, ServingOptions(runtime="tensorrt", tensorrt_batch=(1, 8, 128)))
    with pytest.raises(InvalidArgumentError, match="min <= opt <= max"):
        ServingOptions(runtime="tensorrt", tensorrt_sequence=(8, 4, 64))
    with pytest.raises(InvalidArgumentError, match="apply to --runtime tensorrt"):
        ServingOptions(runtime="onnxruntime", tensorrt_batch=(1, 2, 4))
