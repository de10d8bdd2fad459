"""`--tokenize-in-encoder`: the tokenizer inside the encoder's Python-backend model.

On the session server: parity as tests/test_parity.py states it (cosine >= 0.99999, max abs
diff <= 1e-4 per embedding against sentence-transformers) for texts of every length sent as
concurrent requests, so that executions merge requests of different lengths and run them in
length groups; search over a one-step pipeline (a bad text refused alone in a shared
execution: tests/test_bad_input.py). Without a server: the layout written, and what the
option refuses.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from sentence_transformers import SentenceTransformer

from export.errors import InvalidArgumentError
from export.repository.config import read_config
from export.repository.records import pipelines
from export.runtimes import ServingOptions
from export.text.pipeline import TextExportOptions
from export.tools.corpus import corpus, long_texts
from export.tools.perf_analyzer import INPUT_FILE
from tests.conftest import ONE_STEP, ONE_STEP_DOCS, ONE_STEP_PROMPTED
from tests.helpers import embed_grpc, embed_many
from tests.test_parity import assert_parity
from triton_embeddings import EmbeddingClient
from triton_embeddings.names import DEFAULT_TEXT_PIPELINE, TEXT, CollectionNames, TextPipelineNames


def embed_concurrently(client: grpcclient.InferenceServerClient, model: str, texts: list[str]) -> np.ndarray:
    """Requests of 1 to 7 texts, 8 at a time: executions merge requests of different lengths."""
    chunks, start = [], 0
    while start < len(texts):
        size = 1 + len(chunks) % 7
        chunks.append(texts[start : start + size])
        start += size
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return np.concatenate(list(pool.map(lambda chunk: embed_grpc(client, model, chunk), chunks)))


def test_one_step_matches_sentence_transformers_and_the_two_steps(grpc_client, default_st_model) -> None:
    texts = corpus(160, seed=5) + long_texts()  # long texts: truncated at 256 tokens as the model is
    served = embed_concurrently(grpc_client, ONE_STEP, texts)
    assert_parity(served, default_st_model.encode(texts), texts)
    two_steps = embed_many(grpc_client, DEFAULT_TEXT_PIPELINE, texts)
    np.testing.assert_allclose(served, two_steps, atol=1e-5, rtol=0)


def test_prompt_max_length_and_left_padding_apply_in_the_encoder(grpc_client, tiny_models) -> None:
    reference = SentenceTransformer(str(tiny_models["tiny-decoder"].path), device="cpu")
    reference.max_seq_length = 16
    texts = corpus(60, seed=6)
    served = embed_concurrently(grpc_client, ONE_STEP_PROMPTED, texts)
    assert_parity(served, reference.encode(texts, prompt_name="query"), texts)


def test_search_over_a_one_step_pipeline(server, default_st_model) -> None:
    texts = list(dict.fromkeys(corpus(80, seed=8)))[:60]
    ids = list(range(len(texts)))
    with EmbeddingClient(server.options.grpc_url) as client:
        assert client.upsert(ONE_STEP_DOCS, texts, ids) == len(texts)
        hits = client.search(ONE_STEP_DOCS, texts, top_k=3)
    assert [row[0].id for row in hits] == ids
    reference = default_st_model.encode(texts, normalize_embeddings=True)
    for row, vector in zip(hits, reference, strict=True):
        for hit in row:
            assert abs(hit.score - float(vector @ reference[hit.id])) < 1e-4


def test_layout_one_model_that_clients_call(repository: Path) -> None:
    """No ensemble in front: the pipeline's name is the encoder that tokenizes, and it carries
    the pipeline's record and the perf_analyzer input file an ensemble would."""
    names = TextPipelineNames(ONE_STEP)
    record = pipelines(repository)[ONE_STEP]
    assert (record.ensembles, record.steps) == ((ONE_STEP,), ())
    assert not (repository / names.tokenizer).exists() and not (repository / names.encoder).exists()
    encoder = read_config(repository / ONE_STEP)
    assert encoder.backend == "python" and not encoder.response_cache.enable
    assert [(i.name, i.allow_ragged_batch) for i in encoder.input] == [(TEXT.name, False)]
    assert (repository / ONE_STEP / INPUT_FILE).is_file()
    params = {key: value.string_value for key, value in encoder.parameters.items()}
    assert params["admission"] == "0" and "admission_encoder" not in params  # nothing admits by work
    assert params["tokenizer_file"] == "tokenizer.json" and params["length_input"] == "attention_mask"
    assert not encoder.dynamic_batching.HasField("default_queue_policy")  # none unless asked for
    (warmup,) = encoder.model_warmup
    assert (repository / ONE_STEP / "warmup" / warmup.inputs[TEXT.name].input_data_file).is_file()
    search = read_config(repository / CollectionNames(ONE_STEP_DOCS).search).ensemble_scheduling.step
    assert [step.model_name for step in search] == [ONE_STEP, CollectionNames(ONE_STEP_DOCS).index]


@pytest.mark.parametrize(
    ("serving", "message"),
    [
        (ServingOptions(runtime="onnxruntime"), "applies to --runtime python"),
        (ServingOptions(max_wait_ms=500), "--max-wait-ms needs the tokenizer step"),
        (ServingOptions(step_instances=2), "--tokenizer-instances needs the tokenizer step"),
    ],
)
def test_what_the_option_refuses(tmp_path: Path, serving: ServingOptions, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        TextExportOptions("any", "x", tmp_path, serving, tokenize_in_encoder=True)


def test_command_line_flag_and_queue_bounds(tmp_path: Path, tiny_models) -> None:
    command = [sys.executable, "-m", "export", "text", str(tiny_models["tiny-bert"].path), "--name", "one"]
    command += ["--repository", str(tmp_path), "--tokenize-in-encoder", "--max-queue-size", "7", "--response-cache"]
    subprocess.run(command, check=True, capture_output=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["one"]
    config = read_config(tmp_path / "one")
    policy = config.dynamic_batching.default_queue_policy
    assert policy.max_queue_size == 7 and policy.timeout_action == 0  # REJECT is 0, the default
    assert config.response_cache.enable
