"""Client-side helpers shared by the tests: build TEXT tensors, call the server, compare."""

from __future__ import annotations

import socket

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from triton_embeddings.names import EMBEDDING, TEXT


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def top10_overlap(got: np.ndarray, expected: np.ndarray, queries: int) -> float:
    """Mean share of each query's 10 nearest documents (by cosine) that `got` and `expected`
    agree on; the first `queries` rows are the queries, the rest the documents."""

    def top10(embeddings: np.ndarray) -> np.ndarray:
        unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
        return np.argsort(-(unit[:queries] @ unit[queries:].T), axis=1)[:, :10]

    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top10(got), top10(expected), strict=True)]))


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
