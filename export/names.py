"""The one place that names things: pipelines, their models, and the tensors between them.

Exporter, Python-backend models (through the configs written from here), tests, load tests
and docs all take names and dtypes from this module, so a rename happens in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

# The pipeline Triton serves by default (`make serve`): sentence-transformers/all-MiniLM-L6-v2.
DEFAULT_TEXT_PIPELINE = "all-MiniLM-L6-v2"

# Triton's ModelConfig data types, keyed by the KServe v2 datatype clients send.
_TRITON_TYPES = {"BYTES": "TYPE_STRING", "FP32": "TYPE_FP32", "INT64": "TYPE_INT64", "INT32": "TYPE_INT32"}
_NUMPY_TYPES = {"BYTES": np.object_, "FP32": np.float32, "INT64": np.int64, "INT32": np.int32}


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as Triton sees it: name, KServe v2 datatype and dims without the batch axis.

    -1 marks a dynamic axis. Dims that depend on the model (the embedding size) are filled in
    with `with_dims` at export time.
    """

    name: str
    datatype: str
    dims: tuple[int, ...]

    @property
    def config_type(self) -> str:
        """The ModelConfig DataType enum name, e.g. TYPE_STRING for BYTES."""
        return _TRITON_TYPES[self.datatype]

    @property
    def numpy_dtype(self) -> type[np.generic]:
        return _NUMPY_TYPES[self.datatype]

    def with_dims(self, *dims: int) -> TensorSpec:
        return replace(self, dims=tuple(dims))


# What clients send and receive.
TEXT = TensorSpec("TEXT", "BYTES", (1,))
EMBEDDING = TensorSpec("EMBEDDING", "FP32", (-1,))

# Between tokenizer and encoder: the Hugging Face names, so the ONNX graph reads like the model.
INPUT_IDS = TensorSpec("input_ids", "INT64", (-1,))
ATTENTION_MASK = TensorSpec("attention_mask", "INT64", (-1,))
TOKEN_TYPE_IDS = TensorSpec("token_type_ids", "INT64", (-1,))
TOKEN_TENSORS = (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS)


@dataclass(frozen=True)
class TextPipelineNames:
    """Model names of one text pipeline: the ensemble clients call and its two steps."""

    ensemble: str

    @property
    def tokenizer(self) -> str:
        return f"{self.ensemble}_tokenizer"

    @property
    def encoder(self) -> str:
        return f"{self.ensemble}_encoder"

    @property
    def models(self) -> tuple[str, ...]:
        return (self.ensemble, self.tokenizer, self.encoder)
