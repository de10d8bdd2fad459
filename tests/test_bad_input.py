"""Bad input: a clear error for that request only, and the server keeps serving.

Each case goes over HTTP as a plain JSON body (what any client can send, unfiltered by
tritonclient), expects HTTP 400 and a message naming what was wrong, then checks that the
server is still ready and still answers a good request.
"""

from __future__ import annotations

import concurrent.futures
import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import ONE_STEP_PROMPTED
from tests.helpers import counts, embed_grpc, post_infer, text_array
from triton_embeddings.names import DEFAULT_TEXT_PIPELINE, EMBEDDING, TEXT, TextPipelineNames


def text_body(data: list, *, name: str = TEXT.name, datatype: str = TEXT.datatype, shape=None) -> bytes:
    shape = [len(data), 1] if shape is None else shape
    return json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}).encode()


def assert_still_serving(server, grpc_client) -> None:
    assert grpc_client.is_server_ready()
    assert embed_grpc(grpc_client, DEFAULT_TEXT_PIPELINE, ["still here"]).shape == (1, 384)


BAD_REQUESTS = {
    "empty string": (text_body(["fine", ""]), "TEXT[1] is an empty string"),
    "wrong input name": (text_body(["x"], name="TEXTS"), "unexpected inference input 'TEXTS'"),
    "missing input": (json.dumps({"inputs": []}).encode(), "missing required input(s) ['TEXT']"),
    "wrong datatype": (text_body([1, 2], datatype="INT32"), "data-type is 'INT32', but model"),
    "no batch axis": (text_body(["x"], shape=[1]), "unexpected shape for input 'TEXT'"),
    "shape says more than data": (text_body(["x"], shape=[2, 1]), "expected 2 string elements"),
    "batch over max_batch_size": (text_body(["x"] * 65), "batch-size must be <= 64"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_request_gets_a_clear_400(server, grpc_client, case: str) -> None:
    body, message = BAD_REQUESTS[case]
    status, reply = post_infer(server, DEFAULT_TEXT_PIPELINE, body)
    assert status == 400, reply
    assert message in reply["error"]
    assert_still_serving(server, grpc_client)


def test_non_utf8_text_names_the_element(server, grpc_client) -> None:
    tensor = grpcclient.InferInput(TEXT.name, [3, 1], TEXT.datatype)
    tensor.set_data_from_numpy(text_array([b"good", b"also good", b"\xff\xfe bad"]))
    with pytest.raises(InferenceServerException) as caught:
        grpc_client.infer(DEFAULT_TEXT_PIPELINE, [tensor])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "TEXT[2] is not valid UTF-8" in caught.value.message()
    assert_still_serving(server, grpc_client)


@pytest.mark.parametrize(
    ("model", "first_step"),
    [
        ("tiny-bert", TextPipelineNames("tiny-bert").tokenizer),
        (ONE_STEP_PROMPTED, ONE_STEP_PROMPTED),  # the one model clients call
    ],
)
def test_bad_request_in_a_batched_group_fails_alone(grpc_client, model: str, first_step: str) -> None:
    """Both pipelines' first steps wait 200 ms to fill a batch, so these requests share
    executions: the tokenizer step, and the encoder that tokenizes (--tokenize-in-encoder)."""
    good = [["first text"], ["second", "and third"], ["a fourth one"], ["fifth"], ["sixth", "seventh"]]
    bad = {5: [b"ok", b"\xc3\x28"], 6: [b""]}  # invalid UTF-8 continuation; empty string
    expected = [embed_grpc(grpc_client, model, texts) for texts in good]
    inferences_before, executions_before = counts(grpc_client, first_step)

    def send(texts: list) -> np.ndarray | InferenceServerException:
        tensor = grpcclient.InferInput(TEXT.name, [len(texts), 1], TEXT.datatype)
        tensor.set_data_from_numpy(text_array(texts))
        try:
            return grpc_client.infer(model, [tensor]).as_numpy(EMBEDDING.name)
        except InferenceServerException as error:
            return error

    requests = good + list(bad.values())
    nothing: list = []  # a request of no texts: Triton or the step refuses it, so it is not counted below
    with concurrent.futures.ThreadPoolExecutor(len(requests) + 1) as pool:
        *results, refused = pool.map(send, [*requests, nothing])

    inferences, executions = counts(grpc_client, first_step)
    assert executions - executions_before < len(requests) <= inferences - inferences_before
    assert isinstance(refused, InferenceServerException), refused
    for got, want in zip(results[: len(good)], expected, strict=True):
        assert isinstance(got, np.ndarray), got
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert "TEXT[1] is not valid UTF-8" in results[5].message()
    assert "TEXT[0] is an empty string" in results[6].message()
    assert results[5].status() == "StatusCode.INVALID_ARGUMENT"
    assert grpc_client.is_model_ready(model)


def test_encoder_called_directly_with_mismatched_inputs(grpc_client) -> None:
    """The encoder is a model of its own too; inputs of different shapes are refused."""
    encoder = TextPipelineNames("tiny-xlm-roberta").encoder
    inputs = []
    for name, length in (("input_ids", 5), ("attention_mask", 4)):
        tensor = grpcclient.InferInput(name, [1, length], "INT64")
        tensor.set_data_from_numpy(np.ones((1, length), dtype=np.int64))
        inputs.append(tensor)
    with pytest.raises(InferenceServerException, match=r"inputs must all have the same shape"):
        grpc_client.infer(encoder, inputs)
    assert grpc_client.is_model_ready(encoder)
