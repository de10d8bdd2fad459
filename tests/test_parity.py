"""Served embeddings against the reference: `SentenceTransformer.encode` on the same texts.

Tolerances: cosine >= 0.99999 and max abs diff <= 1e-4 per embedding. The served graph is the
same computation in onnxruntime instead of torch, with different batch padding; what remains
is float32 rounding, about 1e-7 here.
"""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from export.tools.compare import cosine
from export.tools.corpus import corpus, long_texts
from tests.helpers import embed_many
from triton_embeddings.names import DEFAULT_TEXT_PIPELINE

MIN_COSINE = 0.99999
MAX_ABS_DIFF = 1e-4


def assert_parity(served: np.ndarray, expected: np.ndarray, texts: list[str]) -> None:
    assert served.shape == expected.shape
    similarity = cosine(served, expected)
    diff = np.abs(served - expected).max(axis=1)
    worst = int(np.argmin(similarity))
    assert similarity.min() >= MIN_COSINE, f"cosine {similarity[worst]:.7f} for {texts[worst][:60]!r}"
    worst = int(np.argmax(diff))
    assert diff.max() <= MAX_ABS_DIFF, f"abs diff {diff[worst]:.2e} for {texts[worst][:60]!r}"


def test_default_model_matches_sentence_transformers(grpc_client, default_st_model: SentenceTransformer) -> None:
    texts = corpus(240)
    assert len(texts) >= 200
    served = embed_many(grpc_client, DEFAULT_TEXT_PIPELINE, texts)
    assert_parity(served, default_st_model.encode(texts), texts)
    # Unit vectors: the model's Normalize module is inside the served graph.
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)


def test_texts_past_max_length_are_truncated_like_sentence_transformers(
    grpc_client, default_st_model: SentenceTransformer
) -> None:
    texts = long_texts()
    tokens = default_st_model.tokenizer(texts)["input_ids"]
    assert min(len(ids) for ids in tokens) > default_st_model.max_seq_length
    served = embed_many(grpc_client, DEFAULT_TEXT_PIPELINE, texts)
    assert_parity(served, default_st_model.encode(texts), texts)
    # Truncation really happened: a text and the same text with more words past the limit agree.
    extended = embed_many(grpc_client, DEFAULT_TEXT_PIPELINE, [texts[1] + " extra words at the end"])
    np.testing.assert_allclose(extended[0], served[1], atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-xlm-roberta", "tiny-decoder"])
def test_other_architectures_match_sentence_transformers(grpc_client, tiny_models, name: str) -> None:
    model = SentenceTransformer(str(tiny_models[name].path), device="cpu")
    texts = corpus(120)
    served = embed_many(grpc_client, name, texts)
    assert_parity(served, model.encode(texts), texts)
