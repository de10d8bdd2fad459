"""Pipelines as units: list, remove, replace atomically, load and unload on a running server."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import tritonclient.http as httpclient

from export.errors import InvalidArgumentError
from export.repository.config import read_config
from export.repository.layout import model_names
from export.repository.records import pipelines, remove_pipeline
from export.runtimes import ServingOptions
from export.serving.server import ServerOptions, TritonServer, free_port
from export.text.pipeline import TextExportOptions, export_text
from tests.conftest import (
    CLIP_INT8,
    DOCS,
    INT8,
    ONE_STEP,
    ONE_STEP_CACHED,
    ONE_STEP_DOCS,
    ONE_STEP_PROMPTED,
    PHOTOS,
)
from tests.helpers import embed_http
from triton_embeddings.names import ClipPipelineNames, TextPipelineNames

EXPECTED = {  # name: (kind, embedding size)
    "all-MiniLM-L6-v2": ("text", 384),
    "tiny-bert": ("text", 32),
    "tiny-xlm-roberta": ("text", 32),
    "tiny-decoder": ("text", 24),
    "tiny-decoder-query": ("text", 24),
    "tiny-bert-impatient": ("text", 32),
    "tiny-bert-cached": ("text", 32),
    "all-MiniLM-L6-v2-int8": ("text", 384),
    "clip-vit-b-32": ("clip", 512),
    CLIP_INT8: ("clip", 512),
    "clip-tiny": ("clip", 32),
    DOCS: ("search", 384),  # collections are listed beside the pipelines they embed with
    PHOTOS: ("search", 512),
    ONE_STEP: ("text", 384),
    ONE_STEP_PROMPTED: ("text", 24),
    ONE_STEP_CACHED: ("text", 32),
    ONE_STEP_DOCS: ("search", 384),
}


def test_list_shows_every_pipeline_once(repository: Path) -> None:
    found = pipelines(repository)
    assert {name: (r.kind, r.embedding_size) for name, r in found.items()} == EXPECTED
    clip = found["clip-vit-b-32"]
    assert clip.ensembles == ClipPipelineNames("clip-vit-b-32").ensembles(classify=True)
    assert set(clip.models) <= set(model_names(repository))
    assert all(r.runtime == "python" for r in found.values())
    quantized = {name: r.precision for name, r in found.items() if r.precision != "fp32"}
    assert quantized == {INT8: "int8", CLIP_INT8: "int8"}
    # Every model in the repository belongs to exactly one pipeline.
    owned = [model for r in found.values() for model in r.models]
    assert sorted(owned) == sorted(model_names(repository))


def test_list_command(repository: Path) -> None:
    command = [sys.executable, "-m", "export", "list", "--repository", str(repository)]
    table = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "| clip-tiny | clip | 32 | python | fp32 | clip-tiny_text, clip-tiny_image |" in table
    rows = json.loads(subprocess.run([*command, "--json"], capture_output=True, text=True, check=True).stdout)
    assert {row["name"] for row in rows} == set(EXPECTED)


@pytest.fixture
def two_pipelines(tmp_path: Path, tiny_models) -> Path:
    repo = tmp_path / "repo"
    for name in ("keep", "drop"):
        export_text(TextExportOptions(str(tiny_models["tiny-xlm-roberta"].path), name, repo))
    (repo / "unrelated").mkdir()
    (repo / "unrelated" / "config.pbtxt").write_text('name: "unrelated"\nbackend: "python"\n')
    return repo


def test_remove_deletes_the_pipeline_and_nothing_else(two_pipelines: Path) -> None:
    record = remove_pipeline(two_pipelines, "drop")
    assert set(record.models) == set(TextPipelineNames("drop").models)
    assert model_names(two_pipelines) == sorted([*TextPipelineNames("keep").models, "unrelated"])
    assert sorted(p.name for p in two_pipelines.parent.iterdir()) == ["repo"]  # no trash left


@pytest.mark.parametrize("name", ["../repo", "keep/../../etc", "drop_tokenizer", "unrelated", "nothing", ".."])
def test_remove_refuses_what_is_not_a_pipeline(two_pipelines: Path, name: str) -> None:
    before = model_names(two_pipelines)
    with pytest.raises(InvalidArgumentError):
        remove_pipeline(two_pipelines, name)
    assert model_names(two_pipelines) == before


def test_remove_command(two_pipelines: Path) -> None:
    command = [sys.executable, "-m", "export", "remove", "drop", "--repository", str(two_pipelines)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0 and "removed drop" in done.stdout
    done = subprocess.run([*command[:4], "../x", *command[5:]], capture_output=True, text=True)
    assert done.returncode == 1 and "invalid pipeline name" in done.stderr


def test_reexport_replaces_atomically(two_pipelines: Path, tiny_models) -> None:
    """A reader polling the repository during a re-export always finds a complete model."""
    encoder = two_pipelines / TextPipelineNames("keep").encoder
    seen, stop = [], threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                config = read_config(encoder)
                seen.append((config.max_batch_size, (encoder / "1" / "model.onnx").stat().st_size > 0))
            except Exception as error:  # a missing or half-written model
                seen.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for size in (8, 16):
            options = TextExportOptions(
                str(tiny_models["tiny-xlm-roberta"].path), "keep", two_pipelines, ServingOptions(max_batch_size=size)
            )
            export_text(options)
    finally:
        stop.set()
        reader.join()
    failures = [item for item in seen if not (isinstance(item, tuple) and item[1])]
    assert seen and not failures, failures[:3]
    assert {size for size, _ in seen} >= {16}
    assert read_config(encoder).max_batch_size == 16


def test_reexport_drops_models_the_new_export_has_not(tmp_path: Path, clip_models) -> None:
    from export.clip.pipeline import ClipExportOptions, export_clip

    repo, tiny = tmp_path / "repo", clip_models["clip-tiny"]
    names = ClipPipelineNames("c")
    export_clip(ClipExportOptions(tiny.arch, "c", None, repo, labels=("cat", "dog")))
    assert (repo / names.classifier).is_dir()
    export_clip(ClipExportOptions(tiny.arch, "c", None, repo))  # no labels this time
    assert model_names(repo) == sorted(names.models(classify=False))


def test_load_and_unload_through_the_repository_api(two_pipelines: Path) -> None:
    """Explicit model control: loading an ensemble loads its steps; unloading it with
    unload_dependents frees them."""
    options = ServerOptions(
        two_pipelines, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
        model_control_mode="explicit",
    )  # fmt: skip
    names = TextPipelineNames("keep")
    with (two_pipelines.parent / "log").open("wb") as log, TritonServer(options, log=log) as server:
        client = httpclient.InferenceServerClient(server.options.http_url)

        def ready() -> set[str]:
            return {m["name"] for m in client.get_model_repository_index() if m.get("state") == "READY"}

        assert ready() == set()
        client.load_model(names.ensemble)
        assert ready() == set(names.models)
        assert embed_http(client, names.ensemble, ["loaded on demand"], binary=True).shape == (1, 32)
        client.unload_model(names.ensemble, unload_dependents=True)
        assert ready() == set()
        client.close()


def test_staged_models_swap_leaves_no_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hundreds of replacements of one model while a reader looks at it: with the exchange it
    is always there; with the two-rename fallback the reader does catch it missing."""
    from export.repository import layout as repo_module

    def write(repository: Path, index: int) -> None:
        with repo_module.staged_models(repository) as staging:
            (staging / "m").mkdir()
            (staging / "m" / "config.pbtxt").write_text(f'name: "m"  # {index}\n')

    def swaps(repository: Path) -> int:
        write(repository, 0)  # the model exists before the reader starts looking
        missing, stop = [0], threading.Event()

        def read() -> None:
            while not stop.is_set():
                if not (repository / "m" / "config.pbtxt").is_file():
                    missing[0] += 1

        reader = threading.Thread(target=read)
        reader.start()
        try:
            for index in range(1, 300):
                write(repository, index)
        finally:
            stop.set()
            reader.join()
        return missing[0]

    assert swaps(tmp_path / "exchange") == 0
    monkeypatch.setattr(repo_module, "exchange", lambda first, second: False)
    assert swaps(tmp_path / "fallback") > 0  # the window the exchange closes is real


def test_stats_command_reports_each_step(server, grpc_client) -> None:
    from tests.helpers import embed_grpc

    embed_grpc(grpc_client, "all-MiniLM-L6-v2", ["count me", "and me"])
    command = [sys.executable, "-m", "export", "stats", "all-MiniLM-L6-v2", "--url", server.options.grpc_url]
    table = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    for model in TextPipelineNames("all-MiniLM-L6-v2").models:
        assert f"| {model} |" in table
    report = json.loads(subprocess.run([*command, "--json"], capture_output=True, text=True, check=True).stdout)
    steps = {step["model"]: step for step in report["steps"]}
    tokenizer = steps["all-MiniLM-L6-v2_tokenizer"]
    assert tokenizer["requests"] >= 2 and tokenizer["executions"] >= 1 and tokenizer["compute_ms"] > 0
    assert tokenizer["batch_size"] == tokenizer["requests"] / tokenizer["executions"]
    # An ensemble's name finds its pipeline too.
    clip = subprocess.run(
        [*command[:4], "clip-vit-b-32_image", *command[5:], "--json"], capture_output=True, text=True, check=True
    )
    assert json.loads(clip.stdout)["pipeline"] == "clip-vit-b-32"
