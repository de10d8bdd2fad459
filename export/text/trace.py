"""A sentence-transformers model as one ONNX graph: token tensors in, sentence embedding out.

The graph is sentence-transformers' own forward pass (Transformer, Pooling, Dense, Normalize
modules, traced), so pooling, padding-side handling and normalization are the library's, not
a re-implementation. Before the file is accepted, onnxruntime's output is compared with
`SentenceTransformer.encode` on varied texts.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from export.text.model import TextModel
from export.text.softmax_guard import drop_softmax_nan_guards
from export.validation import DEFAULT_OPSET, VALIDATION_TEXTS, Agreement, require_agreement
from triton_embeddings.names import EMBEDDING


class _SentenceEmbedding(torch.nn.Module):
    """Positional tensors in (what the ONNX exporter traces), ST's features dict inside."""

    def __init__(self, text_model: TextModel) -> None:
        super().__init__()
        self.model = text_model.model
        self.input_names = [spec.name for spec in text_model.inputs]
        self.train(self.model.training)  # see export.clip.trace._Tower: the exporter restores this mode

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        features = dict(zip(self.input_names, tensors, strict=True))
        return self.model(features)["sentence_embedding"]


def export_text_onnx(text_model: TextModel, path: Path, *, opset: int = DEFAULT_OPSET) -> None:
    """Trace the model on a two-text batch of unequal lengths, with batch and sequence dynamic,
    then drop the attention's softmax NaN guards (softmax_guard.py)."""
    names = [spec.name for spec in text_model.inputs]
    sample = text_model.model.preprocess(list(VALIDATION_TEXTS[:2]))
    output = EMBEDDING.with_dims(text_model.dimension)
    axes = {spec.name: spec.dynamic_axes() for spec in (*text_model.inputs, output)}
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about every Python-level shape check; the validation below is
        # what tells whether the traced graph generalizes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _SentenceEmbedding(text_model),
            tuple(sample[name] for name in names),
            str(path),
            input_names=names,
            output_names=[output.name],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    drop_softmax_nan_guards(path)


def check_text_onnx(text_model: TextModel, path: Path, **tolerance: float) -> Agreement:
    """Compare what the pipeline will serve with `SentenceTransformer.encode`; raise if they differ.

    The texts go through the served tokenizer's setup (tokenizer.json, truncation, padding,
    prompt) and onnxruntime on `path`, so both halves of the pipeline are checked. The
    absolute tolerance scales with the embedding's magnitude, for models without Normalize.
    """
    import onnxruntime as ort

    texts = list(VALIDATION_TEXTS)
    expected = text_model.model.encode(texts, prompt=text_model.tokenizer.prefix, convert_to_numpy=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run([EMBEDDING.name], text_model.tokenize(texts))
    return require_agreement("served tokenizer + ONNX output vs sentence-transformers", got, expected, **tolerance)
