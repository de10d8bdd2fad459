"""Triton's model-repository API over HTTP, as the stub watchdog uses it: which models are
ready, how many instances a model's config asks for, and reloading one.

Used by the launcher (server.py) for the server it started, and by the standalone watchdog
(`python -m export watchdog`) beside a server it did not start, e.g. in docker compose. The
repository API is restricted by the admin key when the server has one (server.py).
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

ADMIN_KEY_HEADER = "admin-key"  # HTTP header carrying the key
RELOAD_PARAMETER = "reloaded_at"  # set by reload(): nanoseconds since the epoch
LOAD_TIMEOUT = 600.0  # seconds a load may take: Triton answers once the model is loaded


class RepositoryApi:
    """The repository API of the server at `http_url` (host:port)."""

    def __init__(self, http_url: str, admin_key: str | None = None) -> None:
        self.http_url, self.admin_key = http_url, admin_key

    def _post(self, path: str, body: dict[str, Any] | None = None) -> bytes:
        headers = {"Content-Type": "application/json"}
        if self.admin_key:
            headers[ADMIN_KEY_HEADER] = self.admin_key
        request = urllib.request.Request(
            f"http://{self.http_url}/v2/repository{path}",
            data=json.dumps(body or {}).encode(),
            headers=headers,
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=LOAD_TIMEOUT) as response:
            return response.read()

    def state(self, model: str) -> str | None:
        """READY, UNAVAILABLE, LOADING, UNLOADING..., or None for a model the repository lacks."""
        index = json.loads(self._post("/index"))
        return next((entry.get("state") for entry in index if entry.get("name") == model), None)

    def is_ready(self, model: str) -> bool:
        return self.state(model) == "READY"

    def config(self, model: str) -> dict[str, Any]:
        """The model's config as the server completed it (JSON)."""
        with urllib.request.urlopen(f"http://{self.http_url}/v2/models/{model}/config", timeout=60) as response:
            return json.loads(response.read())

    def statistics(self, model: str) -> dict[str, Any]:
        """The model's inference statistics (requests, failures, queue and compute times)."""
        with urllib.request.urlopen(f"http://{self.http_url}/v2/models/{model}/stats", timeout=60) as response:
            return json.loads(response.read())

    def instances(self, model: str) -> int:
        """Instances the model's config asks for: one stub each on a CPU server."""
        return sum(int(group.get("count", 1)) for group in self.config(model).get("instance_group", []))

    def reload(self, model: str) -> None:
        """Load the model again with its own config, while the loaded one keeps serving.

        A `load` whose config differs from the loaded one's loads anew (a plain `load` of an
        unchanged model, or one with the same config again, does nothing: seen), and Triton swaps
        the new instances in once they are all up: the model never stops existing. The config
        differs by one parameter, RELOAD_PARAMETER, the time of this reload (no step reads it).
        The old way, unload then load, left a gap in which
        every request was told `Request for unknown model: ... has no available versions`
        (gRPC NOT_FOUND), which retry policies do not retry. Returns once the new one serves;
        if it fails to load, the old one stays, and the error is raised."""
        config = self.config(model)
        config.setdefault("parameters", {})[RELOAD_PARAMETER] = {"string_value": str(time.time_ns())}
        self._post(f"/models/{model}/load", {"parameters": {"config": json.dumps(config)}})
