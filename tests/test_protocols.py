"""One pipeline, three ways in: HTTP with JSON, HTTP with binary tensors, gRPC.

Sequential requests of the same texts run the same batch through the same graph, so results
must be bit-identical across protocols. A 64-text request and 64 one-text requests pad to
different lengths (different GEMM shapes), so they agree to float32 rounding: atol 1e-6.
"""

from __future__ import annotations

import json
import urllib.request

import numpy as np

from export.tools.corpus import corpus
from tests.helpers import embed_grpc, embed_http
from triton_embeddings.names import DEFAULT_TEXT_PIPELINE, EMBEDDING, TEXT


def test_http_json_http_binary_and_grpc_agree_exactly(http_client, grpc_client) -> None:
    texts = corpus(40)
    over_grpc = embed_grpc(grpc_client, DEFAULT_TEXT_PIPELINE, texts)
    over_json = embed_http(http_client, DEFAULT_TEXT_PIPELINE, texts, binary=False)
    over_binary = embed_http(http_client, DEFAULT_TEXT_PIPELINE, texts, binary=True)
    assert over_grpc.shape == (40, 384)
    assert over_grpc.dtype == over_json.dtype == over_binary.dtype == np.float32
    np.testing.assert_array_equal(over_json, over_grpc)
    np.testing.assert_array_equal(over_binary, over_grpc)


def test_the_readme_curl_request(server, grpc_client) -> None:
    """The plain JSON body README.md shows, sent without tritonclient."""
    body = {"inputs": [{"name": TEXT.name, "datatype": TEXT.datatype, "shape": [2, 1], "data": ["a cat", "a dog"]}]}
    request = urllib.request.Request(
        f"http://{server.options.http_url}/v2/models/{DEFAULT_TEXT_PIPELINE}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        reply = json.load(response)
    (output,) = reply["outputs"]
    assert output["name"] == EMBEDDING.name and output["datatype"] == EMBEDDING.datatype
    assert output["shape"] == [2, 384]
    served = np.array(output["data"], dtype=np.float32).reshape(2, 384)
    np.testing.assert_array_equal(served, embed_grpc(grpc_client, DEFAULT_TEXT_PIPELINE, ["a cat", "a dog"]))


def test_a_batch_of_64_equals_64_single_requests(grpc_client) -> None:
    texts = corpus(64)
    batched = embed_grpc(grpc_client, DEFAULT_TEXT_PIPELINE, texts)
    singles = np.concatenate([embed_grpc(grpc_client, DEFAULT_TEXT_PIPELINE, [text]) for text in texts])
    assert batched.shape == singles.shape == (64, 384)
    np.testing.assert_allclose(batched, singles, atol=1e-6, rtol=0)
