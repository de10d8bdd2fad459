"""Who may change what: off loopback, the admin APIs need a key; inference never does."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from export.serving.server import (
    ADMIN_KEY_HEADER,
    GRPC_ADMIN_KEY_HEADER,
    ServerError,
    ServerOptions,
    TritonServer,
    free_port,
)
from export.text.pipeline import TextExportOptions, export_text
from tests.helpers import embed_grpc
from triton_embeddings.names import TextPipelineNames

KEY = "s3cret-test-key"
NAMES = TextPipelineNames("guarded")


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory: pytest.TempPathFactory, tiny_models):
    """Bound to every address, explicit model control, the admin key set."""
    folder = tmp_path_factory.mktemp("guarded")
    export_text(TextExportOptions(str(tiny_models["tiny-xlm-roberta"].path), NAMES.ensemble, folder / "repo"))
    options = ServerOptions(
        folder / "repo", host="0.0.0.0", http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
        model_control_mode="explicit", load_models=(NAMES.ensemble,), admin_key=KEY,
    )  # fmt: skip
    with (folder / "log").open("wb") as log, TritonServer(options, log=log) as server:
        yield server


def post(server, path: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(
        f"http://{server.options.http_url}{path}", data=b"{}", headers=headers or {}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_serve_refuses_a_public_address_without_a_key(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="pass --admin-key KEY"):
        TritonServer(ServerOptions(tmp_path, host="0.0.0.0")).start()
    done = subprocess.run(
        [sys.executable, "-m", "export", "serve", "--repository", str(tmp_path), "--host", "0.0.0.0"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 1 and "--admin-key" in done.stderr


def test_repository_api_needs_the_key_over_http(guarded_server) -> None:
    unload = f"/v2/repository/models/{NAMES.ensemble}/unload"
    load = f"/v2/repository/models/{NAMES.ensemble}/load"
    assert post(guarded_server, unload) == 403
    assert post(guarded_server, unload, {ADMIN_KEY_HEADER: "wrong"}) == 403
    assert post(guarded_server, "/v2/logging") == 403
    assert post(guarded_server, load, {ADMIN_KEY_HEADER: KEY}) == 200
    index = json.loads(
        urllib.request.urlopen(
            urllib.request.Request(
                f"http://{guarded_server.options.http_url}/v2/repository/index",
                data=b"{}",
                headers={ADMIN_KEY_HEADER: KEY},
                method="POST",
            ),
            timeout=60,
        ).read()
    )
    assert {m["name"] for m in index if m.get("state") == "READY"} >= {NAMES.ensemble}


def test_repository_api_needs_the_key_over_grpc(guarded_server) -> None:
    client = grpcclient.InferenceServerClient(guarded_server.options.grpc_url)
    with pytest.raises(InferenceServerException, match="restricted"):
        client.load_model(NAMES.ensemble)
    client.load_model(NAMES.ensemble, headers={GRPC_ADMIN_KEY_HEADER: KEY})
    client.close()


def test_inference_and_health_need_no_key(guarded_server) -> None:
    client = grpcclient.InferenceServerClient(guarded_server.options.grpc_url)
    assert client.is_server_ready()
    assert embed_grpc(client, NAMES.ensemble, ["no key needed"]).shape == (1, 32)
    client.close()


def test_the_documented_curl_calls(guarded_server) -> None:
    """docs/operations.md's unload with unload_dependents, then load, over plain HTTP."""
    base = f"http://{guarded_server.options.http_url}/v2/repository"
    headers = {ADMIN_KEY_HEADER: KEY, "Content-Type": "application/json"}

    def call(path: str, body: dict) -> list | dict | None:
        request = urllib.request.Request(f"{base}{path}", json.dumps(body).encode(), headers, method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            text = response.read()
        return json.loads(text) if text else None

    def ready() -> set[str]:
        return {m["name"] for m in call("/index", {}) if m.get("state") == "READY"}

    call(f"/models/{NAMES.ensemble}/load", {})
    assert ready() == set(NAMES.models)
    call(f"/models/{NAMES.ensemble}/unload", {"parameters": {"unload_dependents": True}})
    assert ready() == set()
    call(f"/models/{NAMES.ensemble}/load", {})
    assert ready() == set(NAMES.models)
