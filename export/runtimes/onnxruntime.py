"""`--runtime onnxruntime`: Triton's native `onnxruntime_onnx` platform of the NGC image, on
the GPU, optionally with ONNX Runtime's TensorRT execution provider (`--tensorrt`)."""

from __future__ import annotations

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from export.repository import config as model_config
from export.runtimes.encoder import ONNX_FILE, EncoderModel
from export.runtimes.options import ServingOptions
from export.runtimes.tensorrt import TENSORRT_WORKSPACE_BYTES


def _gpu_warmups(encoder: EncoderModel) -> list[mc.ModelWarmup]:
    """The two ends of the shape range: TensorRT builds (or loads) its engines at load."""
    shortest, _, longest = encoder.sequence or (0, 0, 0)
    return encoder.warmups((shortest, 1), (longest, encoder.batching.max_batch_size))


def onnxruntime_encoder(model_dir: Path, encoder: EncoderModel, serving: ServingOptions) -> mc.ModelConfig:
    """Triton's ONNX Runtime backend on the GPU (NGC image). Requests merge only when their
    padded lengths match, which the tokenizer's batch-wide padding makes common."""
    inputs = [model_config.model_input(spec) for spec in encoder.inputs]
    config = model_config.gpu_model(
        encoder.name, inputs, encoder.outputs, encoder.batching, platform="onnxruntime_onnx", model_filename=ONNX_FILE
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
