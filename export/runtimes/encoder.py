"""An ONNX encoder as every runtime sees it: its tensors, batching, sequence range and warm-ups."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tritonclient.grpc import model_config_pb2 as mc

from export.repository.config import Batching
from triton_embeddings.names import TensorSpec

ONNX_FILE = "model.onnx"


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
    ragged: bool = True
    extra_outputs: Sequence[TensorSpec] = ()  # graphs with more than one output (the classifier)

    @property
    def outputs(self) -> list[TensorSpec]:
        return [self.output, *self.extra_outputs]

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
