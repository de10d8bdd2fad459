"""README.md's examples run as written, against the test server (ports swapped in)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from tests import images
from tests.helpers import post_infer

README = (Path(__file__).parents[1] / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


def on_test_server(code: str, server) -> str:
    return code.replace("localhost:8000", server.options.http_url).replace("localhost:8001", server.options.grpc_url)


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_examples(server, index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each example embeds two items (or searches); image files it opens are generated in its folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cat.jpg").write_bytes(images.jpeg(400, 300))
    (tmp_path / "dog.png").write_bytes(images.in_mode("RGBA"))
    namespace: dict = {}
    exec(on_test_server(PYTHON_BLOCKS[index], server), namespace)
    if "hits" in namespace:  # the search example: hits for each query, closest first
        hits = namespace["hits"]
        assert hits and all(row and row[0].score >= row[-1].score for row in hits)
        return
    embeddings = namespace["embeddings"]
    assert embeddings.shape[0] == 2 and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_curl_example(server) -> None:
    (command,) = re.findall(r"^curl .*?\n(?:  .*\n)*", README, flags=re.MULTILINE)
    words = shlex.split(command.replace("\\\n", " "))
    url, body = words[2], words[words.index("-d") + 1]
    model = re.fullmatch(r"localhost:8000/v2/models/(.+)/infer", url).group(1)
    status, reply = post_infer(server, model, body.encode())
    assert status == 200
    assert reply["outputs"][0]["shape"] == [len(json.loads(body)["inputs"][0]["data"]), 384]


def test_readme_shows_the_two_commands() -> None:
    assert "make serve" in README and "make test" in README
