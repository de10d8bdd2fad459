"""`pip install .` without extras gives a working client: a fresh venv, the project installed
from this checkout (not editable), then embeddings from the session's server over gRPC and HTTP
that equal the ones this venv's client gets, with no torch, onnxruntime, sentence-transformers
or tokenizers installed and nothing of `export` imported. pip may fetch from PyPI; with a warm
pip cache this takes about a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from export.tools.corpus import corpus
from triton_embeddings import EmbeddingClient
from triton_embeddings.names import DEFAULT_TEXT_PIPELINE

ROOT = Path(__file__).parents[1]
HEAVY = ("torch", "onnxruntime", "sentence_transformers", "tokenizers")

# Runs in the fresh venv: argv = grpc url, http url, texts (JSON file), output (.npz), modules not to have.
SCRIPT = """
import asyncio, importlib.util, json, sys
import numpy as np
import triton_embeddings
from triton_embeddings import AsyncEmbeddingClient, EmbeddingClient
from triton_embeddings.names import DEFAULT_TEXT_PIPELINE

grpc_url, http_url, texts_path, output, *heavy = sys.argv[1:]
with open(texts_path) as file:
    texts = json.load(file)
with EmbeddingClient(grpc_url) as client:
    grpc = client.embed_text(DEFAULT_TEXT_PIPELINE, texts)
with EmbeddingClient(http_url, "http") as client:
    http = client.embed_text(DEFAULT_TEXT_PIPELINE, texts)

async def embed_async():
    async with AsyncEmbeddingClient(grpc_url) as client:
        return await client.embed_text(DEFAULT_TEXT_PIPELINE, texts)

np.savez(output, grpc=grpc, http=http, grpc_async=asyncio.run(embed_async()))
print(json.dumps({
    "package": triton_embeddings.__file__,
    "numpy": np.__version__,
    "export_imported": sorted(m for m in sys.modules if m == "export" or m.startswith("export.")),
    "installed": [name for name in heavy if importlib.util.find_spec(name) is not None],
}))
"""


def run(command: list[str | Path], timeout: float, cwd: Path) -> str:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def checkout_copy(destination: Path) -> Path:
    """The checkout's files (tracked, and new ones git does not ignore), as a clean tree: pip
    builds in the source folder, and a build/ left in the checkout could hold stale modules."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], 60, ROOT)
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    return destination


def test_the_client_installed_alone_embeds_like_this_one(server, tmp_path: Path) -> None:
    venv, source = tmp_path / "venv", checkout_copy(tmp_path / "source")
    run([sys.executable, "-m", "venv", venv], 120, tmp_path)
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "--no-input", "--progress-bar", "off", source], 900, tmp_path)

    texts = corpus(100)  # two requests of the default pipeline (max_batch_size 64)
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    (tmp_path / "embed.py").write_text(SCRIPT)
    args = [server.options.grpc_url, server.options.http_url, "texts.json", "embeddings.npz", *HEAVY]
    report = json.loads(run([python, "embed.py", *args], 180, tmp_path).splitlines()[-1])

    assert Path(report["package"]).is_relative_to(venv), report  # the installed copy, not the checkout
    assert report["installed"] == [], f"pip install . pulled in {report['installed']}"
    assert report["export_imported"] == [], f"triton_embeddings imported {report['export_imported']}"
    assert int(report["numpy"].split(".")[0]) >= 2, f"the client got numpy {report['numpy']}: pinned below 2?"
    with EmbeddingClient(server.options.grpc_url) as client:
        expected = client.embed_text(DEFAULT_TEXT_PIPELINE, texts)
    with np.load(tmp_path / "embeddings.npz") as served:
        for name in ("grpc", "http", "grpc_async"):
            assert served[name].shape == expected.shape == (100, 384) and served[name].dtype == np.float32
            # Same server, same texts; batches may merge differently with other requests (float32 rounding).
            assert np.allclose(served[name], expected, atol=1e-6, rtol=0), name
