"""Where an ONNX encoder runs: one function per `--runtime`, each writing a model folder.

- `python`: an onnxruntime session inside a Python-backend model. The only choice on the
  bundled server (its wheel has no ONNX Runtime backend); runs on the CPU.
- `onnxruntime`: Triton's native `onnxruntime_onnx` platform of the NGC image, on the GPU.

Both take the same ONNX file, inputs and outputs, so the ensemble in front does not change.
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
from export.names import TensorSpec
from export.repository import add_python_model

ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class ServingDefaults:
    """Batching defaults per runtime: measured on the 2-core CPU for `python`; starting
    points for one GPU for `onnxruntime` (see docs/text-embeddings.md)."""

    max_batch_size: int
    max_queue_delay_us: int
    encoder_instances: int
    tokenizer_instances: int


DEFAULTS = {
    "python": ServingDefaults(max_batch_size=64, max_queue_delay_us=0, encoder_instances=1, tokenizer_instances=1),
    "onnxruntime": ServingDefaults(
        max_batch_size=128, max_queue_delay_us=500, encoder_instances=1, tokenizer_instances=2
    ),
}


@dataclass(frozen=True)
class ServingOptions:
    """How a pipeline is served, as asked for on the command line; None: the runtime's default.

    `step_instances` counts each Python step (tokenizer, image preprocess, classifier);
    `instances` each encoder.
    """

    runtime: str = "python"
    max_batch_size: int | None = None
    instances: int | None = None
    step_instances: int | None = None
    max_queue_delay_us: int | None = None
    intra_op_threads: int = 0

    def batching(self) -> tuple[Batching, Batching]:
        """(Python steps, encoders) batching, with the runtime's defaults filled in."""
        defaults = DEFAULTS[check_runtime(self.runtime)]
        size = self.max_batch_size or defaults.max_batch_size
        delay = defaults.max_queue_delay_us if self.max_queue_delay_us is None else self.max_queue_delay_us
        return (
            Batching(size, delay, self.step_instances or defaults.tokenizer_instances),
            Batching(size, delay, self.instances or defaults.encoder_instances),
        )


@dataclass(frozen=True)
class EncoderModel:
    """An ONNX encoder (already written as `ONNX_FILE` in the model's version folder) and
    how to serve it.

    `ragged`: the inputs' last axis varies between requests (token sequences). The Python
    runtime then merges requests of different lengths, padding with `pad_values` on
    `padding_side` (see `python_encoder`); fixed-shape inputs (pixels) merge anyway.
    """

    name: str
    inputs: Sequence[TensorSpec]
    output: TensorSpec
    batching: Batching
    ragged: bool = False
    pad_values: Mapping[str, int] = field(default_factory=dict)
    padding_side: str = "right"
    intra_op_threads: int = 0


def python_encoder(model_dir: Path, encoder: EncoderModel) -> mc.ModelConfig:
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
        "intra_op_threads": str(encoder.intra_op_threads),
    }
    inputs = [model_config.model_input(spec, ragged=encoder.ragged) for spec in encoder.inputs]
    return model_config.python_model(encoder.name, inputs, [encoder.output], encoder.batching, parameters)


def onnxruntime_encoder(model_dir: Path, encoder: EncoderModel) -> mc.ModelConfig:
    """Triton's ONNX Runtime backend on the GPU (NGC image). Requests merge only when their
    padded lengths match, which the tokenizer's batch-wide padding makes common."""
    inputs = [model_config.model_input(spec) for spec in encoder.inputs]
    return model_config.onnxruntime_model(
        encoder.name, inputs, [encoder.output], encoder.batching, model_filename=ONNX_FILE
    )


RUNTIMES: dict[str, Callable[[Path, EncoderModel], mc.ModelConfig]] = {
    "python": python_encoder,
    "onnxruntime": onnxruntime_encoder,
}


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise InvalidArgumentError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    return runtime


def write_encoder(model_dir: Path, encoder: EncoderModel, runtime: str) -> mc.ModelConfig:
    """Write config.pbtxt (and model.py where the runtime needs one) beside the ONNX file."""
    config = RUNTIMES[check_runtime(runtime)](model_dir, encoder)
    model_config.write_config(config, model_dir)
    return config
