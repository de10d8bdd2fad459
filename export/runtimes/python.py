"""`--runtime python`: onnxruntime inside a Python-backend model, on the CPU.

The only choice on the bundled server (its wheel has no ONNX Runtime backend).
"""

from __future__ import annotations

import json
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from export.repository import config as model_config
from export.runtimes.encoder import ONNX_FILE, EncoderModel
from export.runtimes.options import DEFAULTS, ServingOptions
from export.steps.writers import add_python_model
from triton_embeddings.names import ATTENTION_MASK


def _python_default(serving: ServingOptions, field: str):
    """`serving.<field>`, else the python runtime's default."""
    value = getattr(serving, field)
    return getattr(DEFAULTS["python"], field) if value is None else value


def _intra_op_threads(encoder: EncoderModel, serving: ServingOptions) -> str:
    """onnxruntime threads per encoder instance: a number, `all` CPUs, or the CPUs split
    `per_instance` (counted where the model loads). The int8 graph has many small operators,
    each a hand-off between the pool's threads, so one pool per core's share serves it faster;
    fp32 is slower that way at concurrency 1, so it keeps all CPUs (docs/performance.md)."""
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
        "admission": "1" if serving.admission_ms() else "0",  # measure each batch's cost per unit
    }
    ragged = encoder.sequence is not None and encoder.ragged
    if ragged and ATTENTION_MASK.name in {spec.name for spec in encoder.inputs}:
        parameters["length_input"] = ATTENTION_MASK.name
        parameters["max_batch_tokens"] = str(_python_default(serving, "max_batch_tokens"))
    inputs = [model_config.model_input(spec, ragged=ragged) for spec in encoder.inputs]
    config = model_config.python_model(encoder.name, inputs, encoder.outputs, encoder.batching, parameters)
    typical = encoder.sequence[1] if encoder.sequence else 0
    config.model_warmup.extend(encoder.warmups((typical, 1)))
    return config
