"""Building a TensorRT engine from an ONNX encoder, for `--runtime tensorrt`.

Needs the `tensorrt` package and an NVIDIA GPU where the export runs: an engine is built for
one GPU model and TensorRT version, so build it on (or for) the serving machine, for example
in the compose file's export service. Without them, the export stops before doing any work,
saying what is missing and what runs without them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path

from export.errors import UserError

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

    from export.runtimes import TENSORRT_WORKSPACE_BYTES

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
