"""`export --response-cache`: identical requests are answered from Triton's cache (serve's
--cache-mb), with the same bytes the pipeline computed; other requests run as before. At the
ensemble of a two-step pipeline, and at the one model of a one-step pipeline
(--tokenize-in-encoder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from sentence_transformers import SentenceTransformer

from export.repository.config import read_config
from tests.conftest import CACHED, ONE_STEP_CACHED
from tests.helpers import embed_grpc
from tests.test_parity import assert_parity
from triton_embeddings.names import DEFAULT_TEXT_PIPELINE


def cache_counts(client: grpcclient.InferenceServerClient, model: str) -> tuple[int, int]:
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]["inference_stats"]
    return int(stats.get("cache_hit", {}).get("count", 0)), int(stats.get("cache_miss", {}).get("count", 0))


@pytest.mark.parametrize("model", [CACHED, ONE_STEP_CACHED])
def test_a_repeated_request_is_a_cache_hit_with_the_same_embedding(grpc_client, tiny_models, model: str) -> None:
    texts = ["a question asked twice", "and a second text in the same request"]
    hits, misses = cache_counts(grpc_client, model)
    first = embed_grpc(grpc_client, model, texts)
    assert cache_counts(grpc_client, model) == (hits, misses + 1)
    again = embed_grpc(grpc_client, model, texts)
    assert cache_counts(grpc_client, model) == (hits + 1, misses + 1)
    np.testing.assert_array_equal(again, first)
    reference = SentenceTransformer(str(tiny_models["tiny-bert"].path), device="cpu").encode(texts)
    assert_parity(again, reference, texts)
    # A request that differs in one text is computed, not served from the cache.
    other = embed_grpc(grpc_client, model, [texts[0], "a different second text"])
    assert cache_counts(grpc_client, model) == (hits + 1, misses + 2)
    np.testing.assert_allclose(other[0], first[0], atol=1e-5, rtol=0)


def test_only_pipelines_exported_with_the_flag_use_the_cache(repository: Path, grpc_client) -> None:
    assert read_config(repository / CACHED).response_cache.enable
    assert not read_config(repository / DEFAULT_TEXT_PIPELINE).response_cache.enable
    embed_grpc(grpc_client, DEFAULT_TEXT_PIPELINE, ["not cached"])
    assert cache_counts(grpc_client, DEFAULT_TEXT_PIPELINE) == (0, 0)
