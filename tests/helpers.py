"""Client-side helpers shared by the tests: build TEXT tensors, call the server, compare."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from export.serving.seaweedfs import CREDENTIALS, SeaweedFS
from export.serving.server import ServerOptions, TritonServer, free_port
from triton_embeddings.names import EMBEDDING, TEXT


def text_array(texts: list[str] | list[bytes]) -> np.ndarray:
    """The [batch, 1] BYTES tensor the TEXT input takes."""
    return np.array([t.encode() if isinstance(t, str) else t for t in texts], dtype=np.object_).reshape(-1, 1)


def embed_grpc(client: grpcclient.InferenceServerClient, model: str, texts: list[str]) -> np.ndarray:
    tensor = grpcclient.InferInput(TEXT.name, [len(texts), 1], TEXT.datatype)
    tensor.set_data_from_numpy(text_array(texts))
    result = client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput(EMBEDDING.name)])
    return result.as_numpy(EMBEDDING.name)


def embed_http(client: httpclient.InferenceServerClient, model: str, texts: list[str], *, binary: bool) -> np.ndarray:
    tensor = httpclient.InferInput(TEXT.name, [len(texts), 1], TEXT.datatype)
    tensor.set_data_from_numpy(text_array(texts), binary_data=binary)
    output = httpclient.InferRequestedOutput(EMBEDDING.name, binary_data=binary)
    return client.infer(model, [tensor], outputs=[output]).as_numpy(EMBEDDING.name)


def embed_many(client: grpcclient.InferenceServerClient, model: str, texts: list[str], batch: int = 32) -> np.ndarray:
    """Embed any number of texts in requests of at most `batch`."""
    return np.concatenate([embed_grpc(client, model, texts[i : i + batch]) for i in range(0, len(texts), batch)])


def counts(client: grpcclient.InferenceServerClient, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) of a model since the server started."""
    (stats,) = client.get_inference_statistics(model).model_stats
    return stats.inference_count, stats.execution_count


def infer_bytes(client: grpcclient.InferenceServerClient, model: str, name: str, items: list, outputs: list[str]):
    """One request with a [n, 1] BYTES input; returns the named outputs as numpy arrays."""
    tensor = grpcclient.InferInput(name, [len(items), 1], "BYTES")
    tensor.set_data_from_numpy(text_array(items))
    result = client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput(o) for o in outputs])
    return [result.as_numpy(output) for output in outputs]


def post_infer(server, model: str, body: bytes) -> tuple[int, dict]:
    """A raw KServe v2 JSON request to Triton's HTTP endpoint: (status, reply)."""
    request = urllib.request.Request(
        f"http://{server.options.http_url}/v2/models/{model}/infer",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


@contextmanager
def triton_on(repository: Path, logs: Path, **options) -> Iterator[TritonServer]:
    """A tritonserver on `repository` on free ports, its log kept in `logs` (pytest prints the
    test's temporary paths on failure); `options`: more ServerOptions fields."""
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    server_options = ServerOptions(repository=repository, **ports, **options)
    with (logs / "tritonserver.log").open("wb") as log, TritonServer(server_options, log=log) as running:
        yield running


@contextmanager
def s3_store(*buckets: str) -> Iterator[SeaweedFS]:
    """A real S3 store (SeaweedFS) with `buckets`, and in this process's environment the
    credentials boto3 and every tritonserver started meanwhile read (restored after)."""
    saved = {key: os.environ.get(key) for key in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        with SeaweedFS() as store:
            for bucket in buckets:
                store.create_bucket(bucket)
            yield store
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
