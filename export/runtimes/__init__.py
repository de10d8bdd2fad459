"""Where an ONNX encoder runs: one module per `--runtime`, each writing a model folder.

- `python`: an onnxruntime session inside a Python-backend model (python.py). The only choice
  on the bundled server (its wheel has no ONNX Runtime backend); runs on the CPU.
- `onnxruntime`: Triton's native `onnxruntime_onnx` platform of the NGC image, on the GPU,
  optionally with ONNX Runtime's TensorRT execution provider (onnxruntime.py).
- `tensorrt`: a TensorRT engine built at export (tensorrt.py); needs the tensorrt package and
  a GPU where the export runs.

All take the same ONNX graph, inputs and outputs, so the ensemble in front does not change.
Every encoder is warmed up at load, so the first client request does not pay for
initialization (or, with TensorRT, for building engines).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from export.repository import config as model_config
from export.runtimes.encoder import ONNX_FILE, EncoderModel
from export.runtimes.onnxruntime import onnxruntime_encoder
from export.runtimes.options import DEFAULTS, ServingOptions, check_runtime
from export.runtimes.python import python_encoder, python_text_encoder
from export.runtimes.tensorrt import check_available, tensorrt_encoder
from export.steps.writers import TokenizerSettings
from triton_embeddings.names import TensorSpec

__all__ = [
    "DEFAULTS",
    "ONNX_FILE",
    "RUNTIMES",
    "EncoderModel",
    "ServingOptions",
    "check_runtime",
    "write_encoder",
    "write_text_encoder",
]

RUNTIMES: dict[str, Callable[[Path, EncoderModel, ServingOptions], mc.ModelConfig]] = {
    "python": python_encoder,
    "onnxruntime": onnxruntime_encoder,
    "tensorrt": tensorrt_encoder,
}


def check_prerequisites(runtime: str) -> None:
    """Before any work: what the runtime needs on the exporting machine."""
    if runtime == "tensorrt":
        check_available()


def write_encoder(model_dir: Path, encoder: EncoderModel, serving: ServingOptions) -> mc.ModelConfig:
    """Write config.pbtxt (and model.py or an engine where the runtime needs one) beside the
    ONNX file."""
    config = RUNTIMES[serving.runtime](model_dir, encoder, serving)
    model_config.write_config(config, model_dir)
    return config


def write_text_encoder(
    model_dir: Path,
    encoder: EncoderModel,
    serving: ServingOptions,
    tokenizer: TokenizerSettings,
    text: TensorSpec,
    parameters: Mapping[str, str],
) -> mc.ModelConfig:
    """An encoder that tokenizes `text` itself (python runtime only: the tokenizer runs in its
    Python-backend model); config.pbtxt, model.py and tokenizer.json beside the ONNX file.
    Clients call it directly, so it carries what an ensemble would: `parameters` (the
    pipeline's record) and the response cache if asked for."""
    if serving.runtime != "python":
        raise ValueError(f"only the python runtime tokenizes inside the encoder, not {serving.runtime!r}")
    config = python_text_encoder(model_dir, encoder, serving, tokenizer, text)
    config.response_cache.enable = serving.cache()
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    model_config.write_config(config, model_dir)
    return config
