"""Search end to end, in one run on one machine: the collection's ensembles against a gateway.

This project: `COLLECTION_search` embeds and searches in one request to Triton (tokenizer,
encoder, index step with the embedded engine), called over gRPC (`AsyncEmbeddingClient`) and
over Triton's own HTTP JSON endpoint. The design people build otherwise: a FastAPI gateway
(`gateway_app` below, one uvicorn worker, access log off) that calls Triton for the embedding
(the plain text pipeline over gRPC with tritonclient) and then searches the same engine
(`EmbeddedIndex`) in its own process, on its own copy of the data (Triton's index step holds
the lock on the collection's folder).

Both hold the same points: 10,000 generated 6-18 word texts with a payload each, ingested
through `COLLECTION_upsert` (the project's client over gRPC) and through the gateway's
`/upsert`, in batches of 64 at concurrency 4, a quarter at a time into each in turn (texts/s
reported); how alike their answers are is checked on 40 queries. Queries are the 240 varied
texts of export.tools.corpus (a letter to passages past max_length), one text per request,
top 10, from N closed-loop clients (asyncio, in this process: its CPU share is reported);
every reply is checked (10 ids, scores descending) and anything else counts as an error. Each
concurrency level runs rounds (default 3 of 5 s), each measuring the systems in turn, so the
drift of a shared machine hits them alike: compare them as ratios. Before that, both wait until
the engine's background indexing (embedded.py's optimizer, which the gateway runs too) is done,
so both are measured in the same steady state.

Image part (unless --skip-images): CLIP ViT-B-32 (random weights, the real model's cost), 640x480
JPEGs ingested through `COLLECTION_image_upsert` (images/s).

    .venv/bin/python -m benchmarks.search_e2e [--seconds 5] [--rounds 3] [--concurrency 1 8 32] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import platform
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import tritonclient.grpc.aio as grpcclient
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from benchmarks.common import CPUS, Row, chart, service, triton
from export.search.collection import COLLECTIONS_FOLDER
from export.serving.server import TritonServer, free_port
from export.steps.index.embedded import EmbeddedIndex
from export.steps.index.filters import FilterError, parse_filter
from export.steps.index.generations import READY
from export.steps.index.hits import CollectionError
from export.tools import payloads
from export.tools.corpus import corpus
from triton_embeddings import AsyncEmbeddingClient
from triton_embeddings.names import (
    DEFAULT_TEXT_PIPELINE,
    EMBEDDING,
    IDS,
    SCORES,
    TEXT,
    TOP_K,
    ClipPipelineNames,
    CollectionNames,
)

DOCS = CollectionNames("bench-docs")  # over the text pipeline
PHOTOS = CollectionNames("bench-photos")  # over the CLIP pipeline
CLIP = ClipPipelineNames("clip-vit-b-32")
HITS = 10
INGEST_BATCH, INGEST_CONCURRENCY = 64, 4
INGEST_ROUNDS = 4  # text ingest alternates between the systems, a quarter at a time
IMAGE_BATCH = 8
TIMEOUT_S = 60.0
Send = Callable[[str], Awaitable[None]]  # one query; raises on any failure or malformed reply


# The gateway: what people put in front of Triton when the server only embeds.


class SearchRequest(BaseModel):
    text: str
    top_k: int = HITS
    filter: dict[str, Any] | None = None


class UpsertRequest(BaseModel):
    texts: list[str]
    ids: list[int]
    payloads: list[dict[str, Any]]


def gateway_app() -> FastAPI:
    """`uvicorn --factory benchmarks.search_e2e:gateway_app`, with GATEWAY_TRITON (gRPC address),
    GATEWAY_PIPELINE (the text pipeline), GATEWAY_DATA (its own collection folder) and
    GATEWAY_DIMENSION. POST /search {text, top_k, filter} -> {ids, scores, payloads};
    POST /upsert {texts, ids, payloads} -> {count}; GET /health -> {points}."""
    pipeline, state = os.environ["GATEWAY_PIPELINE"], {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["triton"] = grpcclient.InferenceServerClient(os.environ["GATEWAY_TRITON"])  # inside the loop
        state["index"] = EmbeddedIndex.open(
            Path(os.environ["GATEWAY_DATA"]), int(os.environ["GATEWAY_DIMENSION"]), "cosine"
        )
        yield
        state["index"].close()
        await state["triton"].close()

    async def embed(texts: list[str]) -> np.ndarray:
        tensor = grpcclient.InferInput(TEXT.name, [len(texts), 1], TEXT.datatype)
        tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object).reshape(-1, 1))
        return (await state["triton"].infer(pipeline, [tensor])).as_numpy(EMBEDDING.name)

    app = FastAPI(lifespan=lifespan)

    def maintain() -> None:
        """The engine's upkeep after each request, as the index step does after each execute
        (background indexing: start it when due, swap its result in)."""
        getattr(state["index"], "maintain", lambda: None)()

    @app.post("/search")
    async def search(request: SearchRequest) -> dict:
        vectors = await embed([request.text])
        try:  # the index is not thread-safe: searched on the event loop, one request at a time
            hits = state["index"].search(vectors, request.top_k, parse_filter(request.filter))
        except (FilterError, CollectionError) as error:
            raise HTTPException(400, str(error)) from None
        maintain()
        payloads = [json.loads(p) for p in hits.payloads[0]]
        return {"ids": hits.ids[0].tolist(), "scores": hits.scores[0].tolist(), "payloads": payloads}

    @app.post("/upsert")
    async def upsert(request: UpsertRequest) -> dict:
        vectors = await embed(request.texts)
        try:
            count = state["index"].upsert(request.ids, vectors, request.payloads)
        except CollectionError as error:
            raise HTTPException(400, str(error)) from None
        maintain()
        return {"count": count}

    @app.get("/health")
    async def health() -> dict:
        index = state["index"]
        status = getattr(index, "status", None)
        return dataclasses.asdict(status()) if status else {"points": index.count()}

    return app


def gateway_folder(work: Path) -> Path:
    return work.resolve() / "gateway-collection"


@contextlib.contextmanager
def gateway(server: TritonServer, dimension: int, work: Path) -> Iterator[str]:
    """The gateway under uvicorn for the block; yields its base URL."""
    port = free_port()
    env = os.environ | {
        "GATEWAY_TRITON": server.options.grpc_url,
        "GATEWAY_PIPELINE": DEFAULT_TEXT_PIPELINE,
        "GATEWAY_DATA": str(gateway_folder(work)),
        "GATEWAY_DIMENSION": str(dimension),
    }
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "benchmarks.search_e2e:gateway_app",
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
    ]  # fmt: skip
    with service(command, f"http://127.0.0.1:{port}/health", work / "gateway.log", env):
        yield f"http://127.0.0.1:{port}"


# The systems under load: each gives a `send` for one query text, checking the reply.


def check_hits(ids: Sequence[Any], scores: Sequence[float]) -> None:
    if len(ids) != HITS or len(scores) != HITS or not all(isinstance(i, int) and i >= 0 for i in ids):
        raise ValueError(f"expected {HITS} ids >= 0, got {list(ids)}")
    if any(later > earlier for earlier, later in itertools.pairwise(scores)):
        raise ValueError(f"scores not in descending order: {list(scores)}")


@contextlib.asynccontextmanager
async def triton_grpc(server: TritonServer) -> AsyncIterator[Send]:
    async with AsyncEmbeddingClient(server.options.grpc_url, timeout=TIMEOUT_S) as client:

        async def send(text: str) -> None:
            (hits,) = await client.search(DOCS.name, [text], top_k=HITS)
            check_hits([h.id for h in hits], [h.score for h in hits])

        yield send


@contextlib.asynccontextmanager
async def http_json(url: str, body: Callable[[str], dict], read: Callable[[dict], tuple]) -> AsyncIterator[Send]:
    """POST `body(text)` as JSON to `url`; `read` takes the reply apart into (ids, scores)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session:

        async def send(text: str) -> None:
            async with session.post(url, json=body(text)) as response:
                reply = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {reply[:200]!r}")
            check_hits(*read(json.loads(reply)))

        yield send


def triton_http_json(server: TritonServer) -> contextlib.AbstractAsyncContextManager[Send]:
    """Triton's own KServe v2 JSON endpoint, as curl or any HTTP client calls it."""

    def body(text: str) -> dict:
        return {
            "inputs": [
                {"name": TEXT.name, "datatype": TEXT.datatype, "shape": [1, 1], "data": [text]},
                {"name": TOP_K.name, "datatype": TOP_K.datatype, "shape": [1, 1], "data": [HITS]},
            ]
        }

    def read(reply: dict) -> tuple:
        outputs = {output["name"]: output["data"] for output in reply["outputs"]}
        return outputs[IDS.name], outputs[SCORES.name]

    return http_json(f"http://{server.options.http_url}/v2/models/{DOCS.search}/infer", body, read)


def gateway_json(url: str) -> contextlib.AbstractAsyncContextManager[Send]:
    return http_json(f"{url}/search", lambda text: {"text": text, "top_k": HITS}, lambda r: (r["ids"], r["scores"]))


# Closed-loop load.


@dataclass(frozen=True)
class Measured:
    """One system at one concurrency; `client_cpu`: this process's share of the machine."""

    system: str
    concurrency: int
    per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    client_cpu: float

    def row(self) -> Row:
        return Row(self.system, self.concurrency, self.per_second, self.p50_ms, self.p99_ms, self.client_cpu)


@dataclass(frozen=True)
class Sample:
    """One closed-loop run: latencies (s) of the answered requests, errors, elapsed s, CPU s of
    this process."""

    latencies: list[float]
    errors: int
    elapsed: float
    cpu: float


async def closed_loop(send: Send, queries: Sequence[str], concurrency: int, seconds: float) -> Sample:
    """`concurrency` clients, each sending its next query as soon as the last is answered, for
    `seconds`."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    deadline = time.perf_counter() + seconds

    async def client(offset: int) -> None:
        position = offset
        while time.perf_counter() < deadline:
            text, position = queries[position % len(queries)], position + concurrency
            began = time.perf_counter()
            try:
                await send(text)
            except Exception as error:  # counted, whatever it is
                errors.append(error)
                continue
            latencies.append(time.perf_counter() - began)

    began, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    if errors:
        print(f"  {len(errors)} errors, the first: {errors[0]!r}", file=sys.stderr)
    return Sample(latencies, len(errors), time.perf_counter() - began, time.process_time() - cpu)


async def sample(
    system: Callable[[], Any], queries: Sequence[str], level: int, seconds: float, warmup: float
) -> Sample:
    async with system() as send:
        if warmup:
            await closed_loop(send, queries, level, warmup)
        return await closed_loop(send, queries, level, seconds)


def summary(name: str, level: int, samples: Sequence[Sample]) -> Measured:
    """The rounds of one system at one concurrency, as one row."""
    latencies = [latency for s in samples for latency in s.latencies]
    elapsed, cpu, errors = (sum(getattr(s, key) for s in samples) for key in ("elapsed", "cpu", "errors"))
    p50, p95, p99 = np.percentile(np.array(latencies or [float("nan")]) * 1000, [50, 95, 99])
    print(f"  {name}, concurrency {level}: {len(latencies) / elapsed:.0f}/s, p50 {p50:.1f} ms, {errors} errors")
    return Measured(name, level, len(latencies) / elapsed, p50, p95, p99, errors, cpu / (elapsed * CPUS))


# Ingest.


@dataclass(frozen=True)
class Ingested:
    system: str
    items: int
    batch: int
    concurrency: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.items / self.seconds


def collection_texts(count: int) -> list[str]:
    return payloads.short_texts(count, seed=11)


def ids_and_payloads(count: int) -> tuple[list[int], list[dict]]:
    """Ids 0.., and a payload each (a group to filter on)."""
    return list(range(count)), [{"group": f"g{i % 10}", "n": i} for i in range(count)]


async def in_batches(store: Callable[[slice], Awaitable[int]], part: range, batch: int, concurrency: int) -> float:
    """Seconds to store the items of `part` in batches, `concurrency` batches in flight; checks the counts."""
    pending = iter([slice(start, min(start + batch, part.stop)) for start in range(part.start, part.stop, batch)])
    stored = 0

    async def worker() -> None:
        nonlocal stored
        for chunk in pending:
            written = await store(chunk)  # not `stored += await ...`: that reads `stored` before awaiting
            stored += written

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if stored != len(part):
        raise RuntimeError(f"stored {stored} of {len(part)} items")
    return time.perf_counter() - began


async def ingest_triton(url: str, collection: str, items: Sequence, part: range, batch: int) -> float:
    """Store `items[part]` through the collection's upsert ensemble (the project's client)."""
    ids, marks = ids_and_payloads(len(items))
    async with AsyncEmbeddingClient(url, timeout=10 * TIMEOUT_S) as client:

        async def store(chunk: slice) -> int:
            return await client.upsert(collection, items[chunk], ids[chunk], marks[chunk])

        return await in_batches(store, part, batch, INGEST_CONCURRENCY)


async def ingest_gateway(url: str, texts: Sequence[str], part: range) -> float:
    ids, marks = ids_and_payloads(len(texts))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10 * TIMEOUT_S)) as session:

        async def store(chunk: slice) -> int:
            body = {"texts": texts[chunk], "ids": ids[chunk], "payloads": marks[chunk]}
            async with session.post(f"{url}/upsert", json=body) as response:
                if response.status != 200:
                    raise RuntimeError(f"gateway upsert: HTTP {response.status}: {await response.text()}")
                return (await response.json())["count"]

        return await in_batches(store, part, INGEST_BATCH, INGEST_CONCURRENCY)


async def agreement(server: TritonServer, url: str, queries: Sequence[str]) -> tuple[int, float]:
    """How alike the two systems answer (the same vectors in both): for how many queries the
    top-10 ids are the same list, and how many of the 10 they share on average (HNSW graphs are
    built apart, so approximate answers may differ a little)."""
    same, shared = 0, 0
    async with AsyncEmbeddingClient(server.options.grpc_url) as client, aiohttp.ClientSession() as session:
        for text in queries:
            (hits,) = await client.search(DOCS.name, [text], top_k=HITS)
            async with session.post(f"{url}/search", json={"text": text, "top_k": HITS}) as response:
                reply = await response.json()
            same += [h.id for h in hits] == reply["ids"]
            shared += len({h.id for h in hits} & set(reply["ids"]))
    return same, shared / len(queries)


def optimizing(folder: Path) -> bool:
    """Whether the embedded engine's background indexing is busy on `folder`: an optimizer
    process works on it (its command line names the folder), or a result waits to be swapped in."""
    if (folder / READY).exists():
        return True
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().split(b"\0")
            if str(folder).encode() in args and any(arg.endswith(b"optimize.py") for arg in args):
                return True
    return False


def settle(server: TritonServer, url: str, folders: Sequence[Path], timeout: float = 900) -> float:
    """Seconds until neither system indexes in the background, so both are measured in the
    same steady state. Each round sends one query to each: the upkeep after a request swaps a
    finished result in, or starts an indexing that is due; two quiet rounds in a row end it."""
    began, quiet = time.perf_counter(), 0
    while quiet < 2:
        if time.perf_counter() - began > timeout:
            raise RuntimeError(f"background indexing still busy after {timeout:.0f} s")
        busy = any(optimizing(folder) for folder in folders)
        asyncio.run(agreement(server, url, ["settle"]))  # one request to each system
        quiet = 0 if busy else quiet + 1
        time.sleep(1)
    return time.perf_counter() - began


# The run.


def export_models(repository: Path, images: bool) -> int:
    """The text pipeline and its collection (and CLIP's); returns the embedding size."""
    from export.search.collection import CollectionOptions, export_collection
    from export.text.default_model import default_model_path
    from export.text.pipeline import TextExportOptions, export_text

    export_text(TextExportOptions(str(default_model_path()), DEFAULT_TEXT_PIPELINE, repository))
    record = export_collection(CollectionOptions(DOCS.name, DEFAULT_TEXT_PIPELINE, repository))
    if images:
        from export.clip.pipeline import ClipExportOptions, export_clip

        export_clip(ClipExportOptions("ViT-B-32", CLIP.name, "none", repository))
        export_collection(CollectionOptions(PHOTOS.name, CLIP.name, repository))
    return record.embedding_size


async def warm_up_images(url: str, jpegs: list[bytes]) -> None:
    async with AsyncEmbeddingClient(url, timeout=10 * TIMEOUT_S) as client:
        await client.embed_image(CLIP.image, jpegs)


async def warm_up(url: str, texts: list[str]) -> None:
    """A few batches through the text pipeline first: the first ingest must not pay its start."""
    async with AsyncEmbeddingClient(url, timeout=10 * TIMEOUT_S) as client:
        for start in range(0, len(texts), INGEST_BATCH):
            await client.embed_text(DEFAULT_TEXT_PIPELINE, texts[start : start + INGEST_BATCH])


def text_ingest(server: TritonServer, url: str, count: int) -> list[Ingested]:
    """The same texts into both systems, a part at a time in turn (drift hits both alike)."""
    texts, grpc = collection_texts(count), server.options.grpc_url
    asyncio.run(warm_up(grpc, payloads.short_texts(4 * INGEST_BATCH, seed=3)))
    step = -(-count // (INGEST_ROUNDS * INGEST_BATCH)) * INGEST_BATCH
    triton_s = gateway_s = 0.0
    for start in range(0, count, step):
        part = range(start, min(start + step, count))
        triton_s += asyncio.run(ingest_triton(grpc, DOCS.name, texts, part, INGEST_BATCH))
        gateway_s += asyncio.run(ingest_gateway(url, texts, part))
        print(f"  ingested {part.stop} of {count} texts: Triton {triton_s:.1f} s, gateway {gateway_s:.1f} s")
    return [
        Ingested(f"Triton {DOCS.upsert} (gRPC client)", count, INGEST_BATCH, INGEST_CONCURRENCY, triton_s),
        Ingested("FastAPI gateway /upsert (HTTP JSON)", count, INGEST_BATCH, INGEST_CONCURRENCY, gateway_s),
    ]


def image_ingest(server: TritonServer, count: int) -> Ingested:
    jpegs = [payloads.jpeg(640, 480, seed=i) for i in range(count)]
    grpc = server.options.grpc_url
    asyncio.run(warm_up_images(grpc, jpegs[:IMAGE_BATCH]))
    seconds = asyncio.run(ingest_triton(grpc, PHOTOS.name, jpegs, range(count), IMAGE_BATCH))
    print(f"  ingested {count} images through {PHOTOS.image_upsert} in {seconds:.1f} s")
    return Ingested(f"Triton {PHOTOS.image_upsert} (gRPC client)", count, IMAGE_BATCH, INGEST_CONCURRENCY, seconds)


def search_load(server: TritonServer, url: str, args: argparse.Namespace) -> list[Measured]:
    """Each concurrency level: `rounds` rounds, each measuring every system in turn (the order
    rotating), so the drift of a shared machine is spread over all of them."""
    queries = corpus()
    systems = {
        "Triton gRPC (triton_embeddings)": lambda: triton_grpc(server),
        "Triton HTTP JSON": lambda: triton_http_json(server),
        "FastAPI gateway HTTP JSON": lambda: gateway_json(url),
    }
    rows = []
    for level in args.concurrency:
        samples: dict[str, list[Sample]] = {name: [] for name in systems}
        for round_ in range(args.rounds):
            names = list(systems)[round_ % len(systems) :] + list(systems)[: round_ % len(systems)]
            for name in names:
                warmup = args.warmup if round_ == 0 else 0.0
                samples[name].append(asyncio.run(sample(systems[name], queries, level, args.seconds, warmup)))
        rows += [summary(name, level, samples[name]) for name in systems]
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    images = not args.skip_images
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        work, repository = Path(folder), Path(folder) / "model_repository"
        began = time.perf_counter()
        dimension = export_models(repository, images)
        print(f"exported in {time.perf_counter() - began:.0f} s")
        server = stack.enter_context(triton(repository, work / "triton.log"))
        url = stack.enter_context(gateway(server, dimension, work))
        load = {"start": os.getloadavg()}
        ingested = text_ingest(server, url, args.points)
        folders = [repository.resolve().parent / COLLECTIONS_FOLDER / DOCS.name, gateway_folder(work)]
        settled = settle(server, url, folders)
        print(f"  background indexing done {settled:.0f} s after the ingest")
        with urllib.request.urlopen(f"{url}/health") as response:
            state = json.load(response)
        same = asyncio.run(agreement(server, url, corpus()[:40]))
        searched = search_load(server, url, args)
        if images:
            ingested.append(image_ingest(server, args.images))
        load["end"] = os.getloadavg()
    return {
        "searched": searched, "ingested": ingested, "agreement": same, "load": load, "settled": settled,
        "gateway": state,
    }  # fmt: skip


# Reporting.


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), platform.processor())
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("qdrant-edge-py", "fastapi", "uvicorn", "onnxruntime"))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{CPUS} vCPUs {model}, Python {platform.python_version()}, Triton 2.51.0, {versions}; {now}"


def search_table(rows: Sequence[Measured]) -> str:
    lines = [
        "| system | concurrency | req/s | p50 ms | p95 ms | p99 ms | errors | load generator CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.system} | {r.concurrency} | {r.per_second:.0f} | {r.p50_ms:.2f} | {r.p95_ms:.2f} | "
            f"{r.p99_ms:.2f} | {r.errors} | {r.client_cpu:.0%} |"
        )
    return "\n".join(lines)


def ratio_table(rows: Sequence[Measured]) -> str:
    """Triton / gateway per concurrency: throughput (higher is better for Triton), p50 and p99
    latency (lower is better for Triton)."""
    lines = [
        "| concurrency | Triton system | req/s ratio | p50 ratio | p99 ratio |",
        "|---|---|---|---|---|",
    ]
    for level in sorted({r.concurrency for r in rows}):
        at = {r.system: r for r in rows if r.concurrency == level}
        base = at["FastAPI gateway HTTP JSON"]
        for name in ("Triton HTTP JSON", "Triton gRPC (triton_embeddings)"):
            r = at[name]
            lines.append(
                f"| {level} | {name} | {r.per_second / base.per_second:.2f} | {r.p50_ms / base.p50_ms:.2f} | "
                f"{r.p99_ms / base.p99_ms:.2f} |"
            )
    return "\n".join(lines)


def ingest_table(rows: Sequence[Ingested]) -> str:
    lines = ["| system | items | batch | concurrency | seconds | items/s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.system} | {r.items} | {r.batch} | {r.concurrency} | {r.seconds:.1f} | {r.per_second:.1f} |")
    return "\n".join(lines)


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    (start, end), (same, shared) = (result["load"]["start"], result["load"]["end"]), result["agreement"]
    skipped = "\n\nImage ingest skipped (--skip-images)." if args.skip_images else ""
    return (
        f"Machine: {machine()}. Load average (1, 5, 15 min) at the start of the measurements "
        f"{', '.join(f'{x:.1f}' for x in start)}, at the end {', '.join(f'{x:.1f}' for x in end)}.\n\n"
        f"Search, {args.points} points, top {HITS}, one query text per request; per row {args.rounds} rounds "
        f"of {args.seconds:.0f} s, the systems in turn (after {args.warmup:.0f} s of warm-up):\n\n"
        f"{search_table(result['searched'])}\n\n"
        f"Triton / gateway, same run:\n\n{ratio_table(result['searched'])}\n\n"
        f"Background indexing of both collections finished {result['settled']:.0f} s after the ingest; the "
        f"gateway's collection then: {json.dumps(result['gateway'])}. On 40 queries, Triton and the gateway "
        f"returned the same top-{HITS} list {same} times and shared {shared:.1f} of {HITS} ids on average.\n\n"
        f"Ingest:\n\n{ingest_table(result['ingested'])}{skipped}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5, help="measurement per system, concurrency and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per concurrency, the systems in turn")
    parser.add_argument("--warmup", type=float, default=2, help="unmeasured load before each measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--points", type=int, default=10_000, help="texts in the collection")
    parser.add_argument("--images", type=int, default=64, help="images ingested in the image part")
    parser.add_argument("--skip-images", action="store_true", help="no CLIP export and no image ingest")
    parser.add_argument("--out", type=Path, help="write search.md and search.png there")
    args = parser.parse_args()
    result = run(args)
    text = report(result, args)
    print(f"\n{text}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "search.md").write_text(text)
        rows = [m.row() for m in result["searched"]]
        chart(rows, f"Search end to end, {args.points} points, top {HITS}", args.out / "search.png")


if __name__ == "__main__":
    main()
