"""`--runtime python`: onnxruntime inside a Python-backend model, on the CPU.

The only choice on the bundled server (its wheel has no ONNX Runtime backend).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from export.repository import config as model_config
from export.runtimes.encoder import ONNX_FILE, EncoderModel
from export.runtimes.options import DEFAULTS, ServingOptions
from export.steps.writers import TokenizerSettings, add_python_model
from triton_embeddings.names import ATTENTION_MASK, TensorSpec

WARMUP_TEXT = "A sentence of about twenty tokens, to warm the tokenizer and the encoder up before clients."


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


def _parameters(encoder: EncoderModel, serving: ServingOptions) -> dict[str, str]:
    """What the encoder's model.py (steps/onnx_encoder/encoding.py) reads from its config."""
    parameters = {
        "onnx_file": ONNX_FILE,
        "pad_values": json.dumps(dict(encoder.pad_values)),
        "padding_side": encoder.padding_side,
        "intra_op_threads": _intra_op_threads(encoder, serving),
        "intra_op_spinning": "1" if _python_default(serving, "intra_op_spinning") else "0",
        "admission": "1" if serving.admission_ms() else "0",  # measure each batch's cost per unit
    }
    if _ragged(encoder) and ATTENTION_MASK.name in {spec.name for spec in encoder.inputs}:
        parameters["length_input"] = ATTENTION_MASK.name
        parameters["max_batch_tokens"] = str(_python_default(serving, "max_batch_tokens"))
    return parameters


def _ragged(encoder: EncoderModel) -> bool:
    return encoder.sequence is not None and encoder.ragged


def python_encoder(model_dir: Path, encoder: EncoderModel, serving: ServingOptions) -> mc.ModelConfig:
    """onnxruntime inside a Python-backend model.

    Sequence inputs are declared ragged: Triton's batcher then merges requests whose lengths
    differ, and model.py pads them to one length. Without it, only requests of equal padded
    length would merge, and under mixed-length traffic most executions would run alone.
    """
    add_python_model(model_dir, "onnx_encoder")
    inputs = [model_config.model_input(spec, ragged=_ragged(encoder)) for spec in encoder.inputs]
    config = model_config.python_model(
        encoder.name, inputs, encoder.outputs, encoder.batching, _parameters(encoder, serving)
    )
    typical = encoder.sequence[1] if encoder.sequence else 0
    config.model_warmup.extend(encoder.warmups((typical, 1)))
    return config


def python_text_encoder(
    model_dir: Path, encoder: EncoderModel, serving: ServingOptions, tokenizer: TokenizerSettings, text: TensorSpec
) -> mc.ModelConfig:
    """The tokenizer's work and the encoder's in one Python-backend model (steps/text_encoder):
    `text` in, the encoder's outputs out; `encoder.inputs` are the token tensors it makes.
    Warmed up with one text, read from the model's warmup folder."""
    add_python_model(model_dir, "text_encoder")
    tokenizer.write_file(model_dir)
    dtypes = {spec.name: np.dtype(spec.numpy_dtype).name for spec in encoder.inputs}
    parameters = _parameters(encoder, serving) | tokenizer.parameters() | {"token_inputs": json.dumps(dtypes)}
    config = model_config.python_model(
        encoder.name, [model_config.model_input(text)], encoder.outputs, encoder.batching, parameters
    )
    warmup = model_dir / "warmup"
    warmup.mkdir(exist_ok=True)
    # A BYTES element in a warm-up file: its length as a 4-byte little-endian integer, then it.
    sample = WARMUP_TEXT.encode("utf-8")
    (warmup / "text").write_bytes(struct.pack("<I", len(sample)) + sample)
    data_type = mc.DataType.Value(text.config_type)
    inputs = {text.name: mc.ModelWarmup.Input(data_type=data_type, dims=[1], input_data_file="text")}
    config.model_warmup.append(mc.ModelWarmup(name="one text", batch_size=1, inputs=inputs))
    return config
