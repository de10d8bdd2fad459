"""Where an ONNX encoder runs: one function per `--runtime`, each writing a model folder.

- `python`: an onnxruntime session inside a Python-backend model. The only choice on the
  bundled server (its wheel has no ONNX Runtime backend); runs on the CPU.
- `onnxruntime`: Triton's native `onnxruntime_onnx` platform of the NGC image, on the GPU,
  optionally with ONNX Runtime's TensorRT execution provider (`--tensorrt`).
- `tensorrt`: a TensorRT engine built at export (`tensorrt_plan` platform); needs the
  tensorrt package and a GPU where the export runs (export/tensorrt_plan.py).

All take the same ONNX graph, inputs and outputs, so the ensemble in front does not change.
Every encoder is warmed up at load, so the first client request does not pay for
initialization (or, with TensorRT, for building engines).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from export import model_config
from export.errors import InvalidArgumentError
from export.model_config import Batching
from export.names import ATTENTION_MASK, TensorSpec
from export.repository import add_python_model, version_dir

ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"
TENSORRT_WORKSPACE_BYTES = 1 << 30


@dataclass(frozen=True)
class ServingDefaults:
    """Batching defaults per runtime: measured on the 2-core CPU for `python`; starting
    points for one GPU for the GPU runtimes (see docs/text-embeddings.md)."""

    max_batch_size: int
    max_queue_delay_us: int
    encoder_instances: int
    tokenizer_instances: int
    # Overload: a step lets 4 batches of one-item requests wait and rejects more at once. The
    # timeout is only a backstop for requests that carry many items (the size bound counts
    # requests): one full batch of long texts takes seconds on a CPU, and a request waiting
    # 30 s has usually been given up by its client (common client and proxy timeouts: 30-60 s).
    queue_batches: int = 4  # max queue size, in batches of max_batch_size
    queue_timeout_ms: int = 30_000
    # python runtime: a merged batch runs in groups of similar length, each within this many
    # token positions (rows x longest row); see python_models/onnx_encoder/padding.py.
    max_batch_tokens: int = 512
    intra_op_spinning: bool = False  # python runtime: onnxruntime threads busy-wait for work
    # Ensembles answer a request identical to an earlier one from Triton's response cache
    # (when the server has one: serve --cache-mb). See docs/performance.md.
    response_cache: bool = False


_GPU = ServingDefaults(max_batch_size=128, max_queue_delay_us=500, encoder_instances=1, tokenizer_instances=2)
DEFAULTS = {
    # Two encoder instances: while one runs a batch the other collects the next, and Triton
    # 2.51's batcher stalls less with the queue policy on (docs/performance.md: c=32 +20-25%,
    # p99 620 -> 210 ms; c=1 +50%). Each uses all cores: 4 threads on 2 when both run, still faster.
    "python": ServingDefaults(max_batch_size=64, max_queue_delay_us=0, encoder_instances=2, tokenizer_instances=1),
    "onnxruntime": _GPU,
    "tensorrt": _GPU,
}


def check_runtime(runtime: str) -> str:
    if runtime not in DEFAULTS:
        raise InvalidArgumentError(f"unknown runtime {runtime!r}; choose one of {', '.join(DEFAULTS)}")
    return runtime


def check_prerequisites(runtime: str) -> None:
    """Before any work: what the runtime needs on the exporting machine."""
    if runtime == "tensorrt":
        from export.tensorrt_plan import check_available

        check_available()


@dataclass(frozen=True)
class ServingOptions:
    """How a pipeline is served, as asked for on the command line; None: the runtime's default.

    `step_instances` counts each Python step (tokenizer, image preprocess, classifier);
    `instances` each encoder. `tensorrt*`: ONNX Runtime's TensorRT execution provider on the
    `onnxruntime` runtime (fp16, and a folder, on the server, to cache built engines in);
    `tensorrt_fp16` also applies to `--runtime tensorrt` engines.
    """

    runtime: str = "python"
    max_batch_size: int | None = None
    instances: int | None = None
    step_instances: int | None = None
    max_queue_delay_us: int | None = None
    max_queue_size: int | None = None
    queue_timeout_ms: int | None = None
    intra_op_threads: int = 0
    max_batch_tokens: int | None = None
    intra_op_spinning: bool | None = None
    response_cache: bool | None = None
    tensorrt: bool = False
    tensorrt_fp16: bool = False
    tensorrt_cache: str | None = None
    tensorrt_batch: tuple[int, int, int] | None = None  # --runtime tensorrt profile: min, opt, max
    tensorrt_sequence: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        check_runtime(self.runtime)
        if (self.tensorrt or self.tensorrt_cache) and self.runtime != "onnxruntime":
            raise InvalidArgumentError("--tensorrt and --tensorrt-cache apply to --runtime onnxruntime")
        if (self.tensorrt_batch or self.tensorrt_sequence) and self.runtime != "tensorrt":
            raise InvalidArgumentError("--tensorrt-batch and --tensorrt-sequence apply to --runtime tensorrt")
        for name, triple in (("batch", self.tensorrt_batch), ("sequence", self.tensorrt_sequence)):
            if triple is not None and not 1 <= triple[0] <= triple[1] <= triple[2]:
                raise InvalidArgumentError(f"--tensorrt-{name} needs 1 <= min <= opt <= max, got {triple}")

    def cache(self) -> bool:
        """Whether the ensembles use the server's response cache."""
        return DEFAULTS[self.runtime].response_cache if self.response_cache is None else self.response_cache

    def batching(self) -> tuple[Batching, Batching]:
        """(Python steps, encoders) batching, with the runtime's defaults filled in."""
        defaults = DEFAULTS[self.runtime]
        size = self.max_batch_size or defaults.max_batch_size
        delay = defaults.max_queue_delay_us if self.max_queue_delay_us is None else self.max_queue_delay_us
        queue = defaults.queue_batches * size if self.max_queue_size is None else self.max_queue_size
        timeout_ms = defaults.queue_timeout_ms if self.queue_timeout_ms is None else self.queue_timeout_ms
        bounds = {"max_queue_size": queue, "queue_timeout_us": timeout_ms * 1000}
        return (
            Batching(size, delay, self.step_instances or defaults.tokenizer_instances, **bounds),
            Batching(size, delay, self.instances or defaults.encoder_instances, **bounds),
        )


@dataclass(frozen=True)
class EncoderModel:
    """An ONNX encoder (already written as `ONNX_FILE` in the model's version folder) and
    how to serve it.

    `sequence` is (shortest, typical, longest) for inputs whose last axis varies (token
    sequences); None when every dimension is fixed (pixels, CLIP's fixed context). With a
    varying axis, the Python runtime merges requests of different lengths (ragged batching),
    padding with `pad_values` on `padding_side` (see `python_encoder`).
    """

    name: str
    inputs: Sequence[TensorSpec]
    output: TensorSpec
    batching: Batching
    sequence: tuple[int, int, int] | None = None
    pad_values: Mapping[str, int] = field(default_factory=dict)
    padding_side: str = "right"
    precision: str = "fp32"

    def shape(self, spec: TensorSpec, length: int) -> list[int]:
        """`spec`'s dims without the batch axis, a varying last axis set to `length`."""
        return [length if dim < 0 else dim for dim in spec.dims]

    def warmups(self, *lengths_and_batches: tuple[int, int]) -> list[mc.ModelWarmup]:
        """Zero-filled warm-up requests at (sequence length, batch size) pairs."""
        warmups = []
        for length, batch in dict.fromkeys(lengths_and_batches):
            inputs = {
                spec.name: mc.ModelWarmup.Input(
                    data_type=mc.DataType.Value(spec.config_type), dims=self.shape(spec, length), zero_data=True
                )
                for spec in self.inputs
            }
            warmups.append(mc.ModelWarmup(name=f"batch {batch}, length {length}", batch_size=batch, inputs=inputs))
        return warmups


def _python_default(serving: ServingOptions, field: str):
    """`serving.<field>`, else the python runtime's default."""
    value = getattr(serving, field)
    return getattr(DEFAULTS["python"], field) if value is None else value


def _intra_op_threads(encoder: EncoderModel, serving: ServingOptions) -> str:
    """onnxruntime threads per encoder instance: a number, `all` CPUs, or the CPUs split
    `per_instance` (counted where the model loads). The int8 graph has many small operators,
    each a hand-off between the pool's threads: with one pool per core's share it served
    +4-23% at concurrency 32 and -0.9-1.6 ms at concurrency 1 on 2 cores; fp32 lost 1 ms at
    concurrency 1 that way, so it keeps all CPUs (docs/performance.md)."""
    if serving.intra_op_threads:
        return str(serving.intra_op_threads)
    return "per_instance" if encoder.precision == "int8" else "all"


def python_encoder(model_dir: Path, encoder: EncoderModel, serving: ServingOptions) -> mc.ModelConfig:
    """onnxruntime inside a Python-backend model.

    Sequence inputs are declared ragged: Triton's batcher then merges requests whose lengths
    differ, and model.py pads them to one length. Without it, only requests of equal padded
    length would merge, and under mixed-length traffic most executions would run alone.
    """
    add_python_model(model_dir, "onnx_encoder")
    parameters = {
        "onnx_file": ONNX_FILE,
        "pad_values": json.dumps(dict(encoder.pad_values)),
        "padding_side": encoder.padding_side,
        "intra_op_threads": _intra_op_threads(encoder, serving),
        "intra_op_spinning": "1" if _python_default(serving, "intra_op_spinning") else "0",
    }
    ragged = encoder.sequence is not None
    if ragged and ATTENTION_MASK.name in {spec.name for spec in encoder.inputs}:
        parameters["length_input"] = ATTENTION_MASK.name
        parameters["max_batch_tokens"] = str(_python_default(serving, "max_batch_tokens"))
    inputs = [model_config.model_input(spec, ragged=ragged) for spec in encoder.inputs]
    config = model_config.python_model(encoder.name, inputs, [encoder.output], encoder.batching, parameters)
    typical = encoder.sequence[1] if ragged else 0
    config.model_warmup.extend(encoder.warmups((typical, 1)))
    return config


def _gpu_warmups(encoder: EncoderModel) -> list[mc.ModelWarmup]:
    """The two ends of the shape range: TensorRT builds (or loads) its engines at load."""
    shortest, _, longest = encoder.sequence or (0, 0, 0)
    return encoder.warmups((shortest, 1), (longest, encoder.batching.max_batch_size))


def onnxruntime_encoder(model_dir: Path, encoder: EncoderModel, serving: ServingOptions) -> mc.ModelConfig:
    """Triton's ONNX Runtime backend on the GPU (NGC image). Requests merge only when their
    padded lengths match, which the tokenizer's batch-wide padding makes common."""
    inputs = [model_config.model_input(spec) for spec in encoder.inputs]
    config = model_config.gpu_model(
        encoder.name, inputs, [encoder.output], encoder.batching, platform="onnxruntime_onnx", model_filename=ONNX_FILE
    )
    if serving.tensorrt:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accelerator.parameters["precision_mode"] = "FP16" if serving.tensorrt_fp16 else "FP32"
        accelerator.parameters["max_workspace_size_bytes"] = str(TENSORRT_WORKSPACE_BYTES)
        if serving.tensorrt_cache:
            accelerator.parameters["trt_engine_cache_enable"] = "1"
            accelerator.parameters["trt_engine_cache_path"] = serving.tensorrt_cache
    config.model_warmup.extend(_gpu_warmups(encoder))
    return config


def tensorrt_config(encoder: EncoderModel) -> mc.ModelConfig:
    inputs = [model_config.model_input(spec) for spec in encoder.inputs]
    config = model_config.gpu_model(
        encoder.name, inputs, [encoder.output], encoder.batching, platform="tensorrt_plan", model_filename=PLAN_FILE
    )
    config.model_warmup.extend(encoder.warmups((encoder.sequence[1] if encoder.sequence else 0, 1)))
    return config


def tensorrt_profile(encoder: EncoderModel, serving: ServingOptions) -> dict[str, tuple[list[int], ...]]:
    """(min, opt, max) shapes per input: by default batch 1, half and all of max_batch_size,
    and the encoder's shortest, typical and longest sequence; --tensorrt-batch and
    --tensorrt-sequence narrow them (an engine is fastest for the shapes it expects)."""
    size = encoder.batching.max_batch_size
    batches = serving.tensorrt_batch or (1, max(1, size // 2), size)
    if batches[2] > size:
        raise InvalidArgumentError(f"--tensorrt-batch max {batches[2]} exceeds --max-batch-size {size}")
    lengths = serving.tensorrt_sequence or encoder.sequence or (0, 0, 0)
    return {
        spec.name: tuple([batch, *encoder.shape(spec, length)] for batch, length in zip(batches, lengths, strict=True))
        for spec in encoder.inputs
    }


def tensorrt_encoder(model_dir: Path, encoder: EncoderModel, serving: ServingOptions) -> mc.ModelConfig:
    """A TensorRT engine built from the ONNX file, with one optimization profile."""
    from export.tensorrt_plan import build_plan

    profile = tensorrt_profile(encoder, serving)
    onnx_path = version_dir(model_dir) / ONNX_FILE
    build_plan(onnx_path, version_dir(model_dir) / PLAN_FILE, profile, fp16=serving.tensorrt_fp16)
    onnx_path.unlink()  # the engine replaces it
    return tensorrt_config(encoder)


RUNTIMES: dict[str, Callable[[Path, EncoderModel, ServingOptions], mc.ModelConfig]] = {
    "python": python_encoder,
    "onnxruntime": onnxruntime_encoder,
    "tensorrt": tensorrt_encoder,
}


def write_encoder(model_dir: Path, encoder: EncoderModel, serving: ServingOptions) -> mc.ModelConfig:
    """Write config.pbtxt (and model.py or an engine where the runtime needs one) beside the
    ONNX file."""
    config = RUNTIMES[serving.runtime](model_dir, encoder, serving)
    model_config.write_config(config, model_dir)
    return config
