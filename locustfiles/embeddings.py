"""Locust load test for the served pipelines, over Triton's KServe v2 protocol.

    locust -f locustfiles/embeddings.py --headless -u 16 -r 16 -t 60s \\
        --host http://localhost:8000 --grpc-host localhost:8001 --model all-MiniLM-L6-v2 \\
        --csv reports/minilm --html reports/minilm.html

One user class per transport; name classes on the command line to run only some:
- `HttpJsonUser`: JSON bodies, what curl sends (images as base64 strings);
- `HttpBinaryUser`: the binary tensor extension, bodies built by tritonclient (FastHttpUser);
- `GrpcUser`: gRPC through triton_embeddings.client, reporting to Locust's request events.

Options: --model (a text, image or classify pipeline), --payload text|image (default: text),
--items (texts or images per request, default 1), --grpc-host. Payloads come from
export.tools.payloads: texts from queries to passages past max_length, JPEGs of four sizes. Every
reply is checked (status, one output row per item); anything else counts as a failure.
"""

from __future__ import annotations

import base64
import itertools
import json
import time

from grpc.experimental import gevent as grpc_gevent

grpc_gevent.init_gevent()  # before any channel exists: gRPC must yield to gevent, as Locust runs on it

import numpy as np  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from locust import FastHttpUser, User, constant, events, task  # noqa: E402

from export.tools import payloads  # noqa: E402
from triton_embeddings.client import EmbeddingClient, Retry  # noqa: E402
from triton_embeddings.names import IMAGE, TEXT  # noqa: E402

PAYLOAD_COUNT = {"text": 2000, "image": 16}


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="pipeline (ensemble) to load")
    parser.add_argument("--payload", choices=("text", "image"), default="text", help="what the pipeline takes")
    parser.add_argument("--items", type=int, default=1, help="texts or images per request")
    parser.add_argument("--grpc-host", default="localhost:8001", help="Triton's gRPC address, for GrpcUser")


_PAYLOADS: dict[str, list] = {}


def _items(kind: str) -> list:
    if kind not in _PAYLOADS:
        count = PAYLOAD_COUNT[kind]
        _PAYLOADS[kind] = payloads.texts(count) if kind == "text" else payloads.images(count)
    return _PAYLOADS[kind]


class _Pipeline:
    """Options, and a cycle through the payload, shared by every user class (listed first in
    their bases, so that this on_start is the one Locust calls). Closed loop: no wait."""

    wait_time = constant(0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.model, self.count = options.model, options.items
        self.is_text = options.payload == "text"
        self.input = TEXT if self.is_text else IMAGE
        self._cycle = itertools.cycle(_items(options.payload))

    def next_items(self) -> list:
        return [next(self._cycle) for _ in range(self.count)]


class HttpJsonUser(_Pipeline, FastHttpUser):
    @task
    def infer(self) -> None:
        items = self.next_items()
        data = items if self.is_text else [base64.b64encode(item).decode() for item in items]
        tensor = {"name": self.input.name, "datatype": self.input.datatype, "shape": [len(items), 1], "data": data}
        body = {"inputs": [tensor]}
        path = f"/v2/models/{self.model}/infer"
        with self.client.post(path, json=body, name=f"json {self.model}", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif any(output["shape"][0] != len(items) for output in json.loads(response.text)["outputs"]):
                response.failure("wrong number of output rows")


class HttpBinaryUser(_Pipeline, FastHttpUser):
    @task
    def infer(self) -> None:
        items = self.next_items()
        tensor = httpclient.InferInput(self.input.name, [len(items), 1], self.input.datatype)
        raw = [item.encode() if isinstance(item, str) else item for item in items]
        tensor.set_data_from_numpy(np.array(raw, dtype=np.object_).reshape(-1, 1), binary_data=True)
        body, header_length = httpclient.InferenceServerClient.generate_request_body([tensor])
        headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_length)}
        path = f"/v2/models/{self.model}/infer"
        with self.client.post(
            path, data=body, headers=headers, name=f"binary {self.model}", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            length = response.headers.get("Inference-Header-Content-Length")
            result = httpclient.InferenceServerClient.parse_response_body(
                response.content, header_length=int(length) if length else None
            )
            if any(output["shape"][0] != len(items) for output in result.get_response()["outputs"]):
                response.failure("wrong number of output rows")


class GrpcUser(_Pipeline, User):
    def on_start(self) -> None:
        super().on_start()
        # No retries: a load test reports what the server refused, not what a second try hid.
        self.client = EmbeddingClient(self.environment.parsed_options.grpc_host, retry=Retry(attempts=1))
        outputs = self.client.pipeline(self.model).outputs
        self.classify = any(kind == "TYPE_STRING" for kind, _ in outputs.values())

    def on_stop(self) -> None:
        self.client.close()

    @task
    def infer(self) -> None:
        items = self.next_items()
        began, error, size = time.perf_counter(), None, 0
        try:
            if self.classify:
                size = len(self.client.classify(self.model, items))
            elif self.is_text:
                size = self.client.embed_text(self.model, items).nbytes
            else:
                size = self.client.embed_image(self.model, items).nbytes
        except Exception as caught:  # every failure, whatever its type, is a failed request
            error = caught
        self.environment.events.request.fire(
            request_type="grpc",
            name=f"grpc {self.model}",
            response_time=(time.perf_counter() - began) * 1000,
            response_length=size,
            exception=error,
            context={},
        )
