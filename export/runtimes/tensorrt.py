"""`--runtime tensorrt`: a TensorRT engine built at export (`tensorrt_plan` platform).

Needs the `tensorrt` package and an NVIDIA GPU where the export runs: an engine is built for
one GPU model and TensorRT version, so build it on (or for) the serving machine, for example
in the compose file's export service. Without them, the export stops before doing any work,
saying what is missing and what runs without them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from export.errors import InvalidArgumentError, UserError
from export.repository import config as model_config
from export.repository.layout import version_dir
from export.runtimes.encoder import ONNX_FILE, EncoderModel
from export.runtimes.options import ServingOptions

PLAN_FILE = "model.plan"
TENSORRT_WORKSPACE_BYTES = 1 << 30
Shapes = tuple[list[int], ...]  # min, opt, max, batch axis included


def _gpu_present() -> bool:
    try:
        import torch
    except ImportError:
        return Path("/dev/nvidia0").exists()
    return torch.cuda.is_available()


def check_available() -> None:
    missing = []
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("the tensorrt package (pip install tensorrt)")
    if not _gpu_present():
        missing.append("an NVIDIA GPU on this machine")
    if missing:
        raise UserError(
            f"--runtime tensorrt builds the engine at export and needs {' and '.join(missing)}. "
            "Without them, --runtime onnxruntime --tensorrt has the server build it at load time instead."
        )


def build_plan(onnx_path: Path, plan_path: Path, profile: Mapping[str, Shapes], *, fp16: bool) -> None:
    """Parse the ONNX file, add one optimization profile per input, build, serialize."""
    check_available()
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, TENSORRT_WORKSPACE_BYTES)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    optimization = builder.create_optimization_profile()
    for name, (smallest, typical, largest) in profile.items():
        optimization.set_shape(name, smallest, typical, largest)
    config.add_optimization_profile(optimization)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise UserError(f"TensorRT could not build an engine from {onnx_path} (see its log above)")
    plan_path.write_bytes(bytes(engine))


def tensorrt_config(encoder: EncoderModel) -> mc.ModelConfig:
    inputs = [model_config.model_input(spec) for spec in encoder.inputs]
    config = model_config.gpu_model(
        encoder.name, inputs, encoder.outputs, encoder.batching, platform="tensorrt_plan", model_filename=PLAN_FILE
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
    profile = tensorrt_profile(encoder, serving)
    onnx_path = version_dir(model_dir) / ONNX_FILE
    build_plan(onnx_path, version_dir(model_dir) / PLAN_FILE, profile, fp16=serving.tensorrt_fp16)
    onnx_path.unlink()  # the engine replaces it
    return tensorrt_config(encoder)
