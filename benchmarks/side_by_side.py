"""Side by side, in one run on one machine: this project's pipelines and the alternatives.

Text: all-MiniLM-L6-v2 (its offline copy), fp32 (and int8 where said), 6-18 word texts, one
text per request, at each concurrency:
  1. onnxruntime in-process on the exported encoders (fp32, int8), tokenization included, at
     batch N just before the served rows at concurrency N (so both sides of a served /
     in-process ratio are measured in the same minutes);
  2. sentence-transformers in-process (`encode`), batch N likewise;
  3. this project's ensemble over gRPC and HTTP (perf_analyzer), and HTTP JSON (wrk); the
     int8 pipeline, and the fp32 one exported with --tokenize-in-encoder, over gRPC;
  4. a minimal FastAPI gateway in front of the same Triton (benchmarks/fastapi_gateway.py),
     tokenizing in the gateway (wrk);
  5. infinity-emb serving the same local folder on the CPU (wrk; `make bench-tools` installs
     it in .bench/infinity, apart: its pins clash with ours). Skipped, and said, if absent.
Image: CLIP ViT-B-32 (random weights, the real architecture's cost) on 640x480 JPEGs: the
image pipeline over gRPC (perf_analyzer) against Pillow + onnxruntime in-process, batch 1
and 32, preprocessing included.

The image rows include the CLIP pipeline exported with `--precision int8` (both towers).

Mixed lengths (`--rows mixed`): MiniLM fp32 and int8 on texts from 2-8 words to passages past
the 256-token limit (payloads.LENGTH_MIX), the traffic where length groups and int8 matter:
onnxruntime in-process at batch N, the ensembles over gRPC, the FastAPI gateway.

GPU proxy (`--rows tiny`, benchmarks/gpu_proxy.py): the same texts and tokenizer with a
2-layer, 32-wide random BERT as the encoder, so the serving path dominates as on a GPU: the
ensemble over gRPC and HTTP (and over gRPC exported with --tokenize-in-encoder, two instances
of one thread), the FastAPI gateway, infinity-emb and onnxruntime in-process on that tiny
model.

Load generators are compiled (perf_analyzer, wrk) and their CPU share is reported. Writes
text, tiny and image tables (markdown) and charts (PNG) to --out.

    .venv/bin/python -m benchmarks.side_by_side [--seconds 10] [--concurrency 1 8 32] [--rows minilm tiny]
        [--out reports/bench]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from benchmarks.common import (
    CPUS,
    Row,
    chart,
    markdown,
    onnx_text_encoder,
    perf_row,
    run_wrk,
    service,
    time_calls,
    triton,
)
from benchmarks.gpu_proxy import TINY_PIPELINE, tiny_model_folder
from export.serving.server import TritonServer, free_port
from export.steps.image_preprocess.image_processing import PreprocessSettings, preprocess
from export.text.default_model import default_model_path
from export.tools import payloads
from export.tools.perf_analyzer import write_input_data
from triton_embeddings.names import (
    DEFAULT_INT8_PIPELINE,
    DEFAULT_TEXT_PIPELINE,
    IMAGE,
    TEXT,
    ClipPipelineNames,
    TextPipelineNames,
)

Load = Callable[[int], list[Row]]  # one system, measured at one concurrency
INFINITY = Path(__file__).resolve().parent.parent / ".bench" / "infinity" / "bin" / "infinity_emb"
CLIP = ClipPipelineNames("clip-vit-b-32")
CLIP_INT8 = ClipPipelineNames("clip-vit-b-32-int8")
MIXED = "mixed:"  # the mixed-length rows' prefix
INT8 = TextPipelineNames(DEFAULT_INT8_PIPELINE)
TINY = "tiny:"  # the GPU-proxy rows' prefix
TINY_STABILITY = 200  # percent: sub-millisecond p99s swing more than 50% between windows here
ONE_STEP = f"{DEFAULT_TEXT_PIPELINE}-one-step"  # --tokenize-in-encoder
TINY_ONE_STEP = f"{TINY_PIPELINE}-one-step"  # --tokenize-in-encoder --instances 2 --intra-op-threads 1


def export_models(repository: Path, rows: list[str], images: bool, tiny_folder: Path) -> None:
    from export.clip.pipeline import ClipExportOptions, export_clip
    from export.runtimes import ServingOptions
    from export.text.pipeline import TextExportOptions, export_text

    if "minilm" in rows or "mixed" in rows:
        export_text(TextExportOptions(str(default_model_path()), DEFAULT_TEXT_PIPELINE, repository))
        export_text(TextExportOptions(str(default_model_path()), DEFAULT_INT8_PIPELINE, repository, precision="int8"))
        export_text(TextExportOptions(str(default_model_path()), ONE_STEP, repository, tokenize_in_encoder=True))
    if "tiny" in rows:
        tiny = str(tiny_model_folder(tiny_folder))
        export_text(TextExportOptions(tiny, TINY_PIPELINE, repository))
        # One step needs a second process to overlap tokenizing with encoding (docs/performance.md).
        serving = ServingOptions(instances=2, intra_op_threads=1)
        export_text(TextExportOptions(tiny, TINY_ONE_STEP, repository, serving, tokenize_in_encoder=True))
    if images:
        export_clip(ClipExportOptions("ViT-B-32", CLIP.name, "none", repository))
        export_clip(ClipExportOptions("ViT-B-32", CLIP_INT8.name, "none", repository, precision="int8"))


def in_process_text(repository: Path, texts: list[str], seconds: float, prefix: str = "") -> Load:
    """onnxruntime on the exported fp32 and int8 encoders, and sentence-transformers, at batch
    N beside the served rows at concurrency N: measured in the same minutes, so that a drift of
    this shared machine moves both sides of the served / in-process ratio alike."""
    from sentence_transformers import SentenceTransformer

    encoders = {
        label: onnx_text_encoder(repository / names.tokenizer, repository / names.encoder)
        for label, names in (("", TextPipelineNames(DEFAULT_TEXT_PIPELINE)), (" int8", INT8))
    }
    model = SentenceTransformer(str(default_model_path()), device="cpu")

    def load(batch: int) -> list[Row]:
        pick, rows = batches(texts, batch), []
        for label, encode in encoders.items():
            rate, p50, p99 = time_calls(lambda i, encode=encode: encode(pick(i)), batch, seconds)
            rows.append(Row(f"{prefix}onnxruntime{label} in-process, batch {batch}".lstrip(), None, rate, p50, p99))
        rate, p50, p99 = time_calls(lambda i: model.encode(pick(i), batch_size=batch), batch, seconds)
        rows.append(Row(f"{prefix}sentence-transformers in-process, batch {batch}".lstrip(), None, rate, p50, p99))
        return rows

    return load


def in_process_tiny(repository: Path, texts: list[str], seconds: float) -> Load:
    """The tiny encoder in-process: the floor a served request could reach (batch N beside
    concurrency N, as above)."""
    names = TextPipelineNames(TINY_PIPELINE)
    encode = onnx_text_encoder(repository / names.tokenizer, repository / names.encoder)

    def load(batch: int) -> list[Row]:
        pick = batches(texts, batch)
        rate, p50, p99 = time_calls(lambda i: encode(pick(i)), batch, seconds)
        return [Row(f"{TINY} onnxruntime in-process, batch {batch}", None, rate, p50, p99)]

    return load


def served_tiny(server: TritonServer, texts: list[str], seconds: float, work: Path) -> Load:
    """The tiny pipeline's ensemble over gRPC and HTTP, and its one-step export over gRPC
    (perf_analyzer)."""
    input_file = write_input_data(work / "tiny", TEXT, texts)
    grpc, http = server.options.grpc_url, server.options.http_url
    systems = (
        ("grpc", grpc, TINY_PIPELINE, ""),
        ("http", http, TINY_PIPELINE, ""),
        ("grpc", grpc, TINY_ONE_STEP, " one step"),
    )

    def load(level: int) -> list[Row]:
        return [
            perf_row(
                f"{TINY} Triton {protocol}{label} (perf_analyzer)",
                pipeline,
                url,
                input_file,
                level,
                seconds,
                protocol,
                stability_percentage=TINY_STABILITY,
            )
            for protocol, url, pipeline, label in systems
        ]

    return load


def served_mixed(server: TritonServer, texts: list[str], seconds: float, work: Path) -> Load:
    """The fp32 and int8 ensembles over gRPC (perf_analyzer) on mixed-length texts."""
    input_file = write_input_data(work / "mixed", TEXT, texts)
    url = server.options.grpc_url

    def load(level: int) -> list[Row]:
        return [
            perf_row(f"{MIXED} Triton grpc{label} (perf_analyzer)", pipeline, url, input_file, level, seconds, "grpc")
            for label, pipeline in (("", DEFAULT_TEXT_PIPELINE), (" int8", INT8.ensemble))
        ]

    return load


def served_text(server: TritonServer, texts: list[str], seconds: float, work: Path) -> Load:
    """Triton over gRPC and HTTP (perf_analyzer), and Triton's HTTP JSON endpoint (wrk)."""
    input_file = write_input_data(work, TEXT, texts)
    bodies = [{"inputs": [{"name": TEXT.name, "datatype": "BYTES", "shape": [1, 1], "data": [t]}]} for t in texts]
    infer_url = f"http://{server.options.http_url}/v2/models/{DEFAULT_TEXT_PIPELINE}/infer"

    def load(level: int) -> list[Row]:
        rows = []
        for protocol, url in (("grpc", server.options.grpc_url), ("http", server.options.http_url)):
            system = f"Triton {protocol} (perf_analyzer)"
            rows.append(perf_row(system, DEFAULT_TEXT_PIPELINE, url, input_file, level, seconds, protocol))
        for label, pipeline in ((" int8", INT8.ensemble), (" one step", ONE_STEP)):
            system = f"Triton grpc{label} (perf_analyzer)"
            rows.append(perf_row(system, pipeline, server.options.grpc_url, input_file, level, seconds, "grpc"))
        return [*rows, run_wrk("Triton HTTP JSON (wrk)", infer_url, bodies, level, seconds)]

    return load


def gateway(
    stack: ExitStack,
    server: TritonServer,
    repository: Path,
    texts: list[str],
    seconds: float,
    work: Path,
    pipeline: str = DEFAULT_TEXT_PIPELINE,
    label: str = "",
) -> Load:
    """The FastAPI gateway (benchmarks/fastapi_gateway.py) in front of the same Triton."""
    names = TextPipelineNames(pipeline)
    port = free_port()
    env = os.environ | {
        "GATEWAY_TRITON": server.options.grpc_url,
        "GATEWAY_ENCODER": names.encoder,
        "GATEWAY_TOKENIZER": str(repository / names.tokenizer),
    }
    command = [sys.executable, "-m", "uvicorn", "benchmarks.fastapi_gateway:app", "--port", str(port)]
    stack.enter_context(service(command, f"http://127.0.0.1:{port}/docs", work / f"gateway{label}.log", env))
    url, bodies = f"http://127.0.0.1:{port}/embed", [{"text": t} for t in texts]
    run_wrk("warm-up", url, bodies, 2, 2)
    return lambda level: [run_wrk(f"{label}FastAPI gateway (wrk)".lstrip(), url, bodies, level, seconds)]


def infinity(stack: ExitStack, texts: list[str], seconds: float, work: Path, folder: Path, label: str = "") -> Load:
    """infinity-emb on the same local folder, torch on the CPU, its defaults otherwise."""
    port = free_port()
    command = [
        str(INFINITY), "v2", "--model-id", str(folder), "--served-model-name", "minilm",
        "--engine", "torch", "--device", "cpu", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = os.environ | {"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
    stack.enter_context(service(command, f"http://127.0.0.1:{port}/health", work / f"infinity{label}.log", env))
    url, bodies = f"http://127.0.0.1:{port}/embeddings", [{"model": "minilm", "input": [t]} for t in texts]
    run_wrk("warm-up", url, bodies, 2, 2)
    return lambda level: [run_wrk(f"{label}infinity-emb (wrk)".lstrip(), url, bodies, level, seconds)]


def images(server: TritonServer, repository: Path, levels: list[int], seconds: float, work: Path) -> list[Row]:
    import numpy as np
    import onnxruntime as ort

    from export.repository.config import read_config

    jpegs = payloads.images(16, sizes=((640, 480),))
    settings = PreprocessSettings.from_json(
        read_config(repository / CLIP.image_preprocess).parameters["preprocess"].string_value
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = CPUS
    pipelines = (("", CLIP), (" int8", CLIP_INT8))
    rows = []
    for label, names in pipelines:
        session = ort.InferenceSession(str(repository / names.image_encoder / "1" / "model.onnx"), options)
        for batch in (1, 32):
            pick = batches(jpegs, batch)

            def run(i: int, pick=pick, session=session) -> None:
                session.run(None, {"pixel_values": np.stack([preprocess(jpeg, settings) for jpeg in pick(i)])})

            rate, p50, p99 = time_calls(run, batch, seconds)
            rows.append(Row(f"Pillow + onnxruntime{label} in-process, batch {batch}", None, rate, p50, p99))
    input_file = write_input_data(work, IMAGE, jpegs)
    url = server.options.grpc_url
    for level in levels:  # fp32 and int8 in turn at each level: drifts hit both
        for label, names in pipelines:
            rows.append(
                perf_row(f"Triton grpc{label} (perf_analyzer)", names.image, url, input_file, level, seconds, "grpc")
            )
    return rows


def batches(items: list, batch: int):
    """i -> the i-th batch of `batch` items, cycling through `items`."""
    return lambda i: [items[(i * batch + k) % len(items)] for k in range(batch)]


def served_loads(
    stack: ExitStack,
    server: TritonServer,
    repository: Path,
    texts: list[str],
    mixed_texts: list[str],
    args: argparse.Namespace,
    work: Path,
) -> tuple[list[Load], list[Load], list[Load]]:
    """(MiniLM loads, tiny loads, mixed-length loads): every server started before any is
    measured."""
    minilm, tiny, mixed = [], [], []
    if "mixed" in args.rows:
        mixed.append(served_mixed(server, mixed_texts, args.seconds, work))
        if "gateway" not in args.skip:
            mixed.append(gateway(stack, server, repository, mixed_texts, args.seconds, work, label=f"{MIXED} "))
    if "minilm" in args.rows:
        minilm.append(served_text(server, texts, args.seconds, work))
        if "gateway" not in args.skip:
            minilm.append(gateway(stack, server, repository, texts, args.seconds, work))
    if "tiny" in args.rows:
        tiny.append(served_tiny(server, texts, args.seconds, work))
        if "gateway" not in args.skip:
            tiny.append(gateway(stack, server, repository, texts, args.seconds, work, TINY_PIPELINE, f"{TINY} "))
    if "infinity" not in args.skip:
        if not INFINITY.exists():
            print(f"infinity-emb skipped: {INFINITY} is missing (make bench-tools)", file=sys.stderr)
        else:
            if "minilm" in args.rows:
                minilm.append(infinity(stack, texts, args.seconds, work, default_model_path()))
            if "tiny" in args.rows:
                tiny.append(infinity(stack, texts, args.seconds, work, work / "tiny_model", f"{TINY} "))
    return minilm, tiny, mixed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="measurement per system and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--out", type=Path, default=Path("reports/bench"))
    parser.add_argument("--skip", nargs="*", default=[], choices=["infinity", "gateway", "images", "in-process"])
    parser.add_argument(
        "--rows", nargs="+", default=["minilm", "mixed", "tiny"], choices=["minilm", "mixed", "tiny"],
        help="text row sets: all-MiniLM-L6-v2 on short and on mixed-length texts, and the GPU proxy (a tiny "
        "encoder); images run with minilm only",
    )  # fmt: skip
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    texts = payloads.short_texts(2000, seed=7)
    mixed_texts = payloads.texts(2000, seed=7)
    with_images = "images" not in args.skip and "minilm" in args.rows
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        work, repository = Path(folder), Path(folder) / "model_repository"
        (work / "tiny").mkdir()
        (work / "mixed").mkdir()
        export_models(repository, args.rows, with_images, work / "tiny_model")
        minilm, tiny, mixed = [], [], []  # in-process first at each level, then the servers
        if "in-process" not in args.skip:
            if "minilm" in args.rows:
                minilm.append(in_process_text(repository, texts, args.seconds))
            if "tiny" in args.rows:
                tiny.append(in_process_tiny(repository, texts, args.seconds))
            if "mixed" in args.rows:
                mixed.append(in_process_text(repository, mixed_texts, args.seconds, f"{MIXED} "))
        server = stack.enter_context(triton(repository, work / "triton.log"))
        # Every server is up before any is measured, and each concurrency level measures them
        # one after the other: drifts of this shared machine then hit all systems alike.
        served = served_loads(stack, server, repository, texts, mixed_texts, args, work)
        minilm, tiny, mixed = minilm + served[0], tiny + served[1], mixed + served[2]
        text_rows, tiny_rows, mixed_rows = [], [], []
        for level in args.concurrency:
            for load in minilm:
                text_rows += load(level)
            for load in mixed:
                mixed_rows += load(level)
            for load in tiny:
                tiny_rows += load(level)
        image_rows = images(server, repository, args.concurrency, args.seconds, work) if with_images else []
    results = (
        ("Text, all-MiniLM-L6-v2", text_rows, "text"),
        ("Mixed lengths: all-MiniLM-L6-v2, queries to passages", mixed_rows, "mixed"),
        ("GPU proxy: tiny BERT (2 layers, 32 wide), MiniLM's tokenizer", tiny_rows, "tiny"),
        ("Image, CLIP ViT-B-32 640x480", image_rows, "image"),
    )
    for title, rows, name in results:
        if rows:
            table = markdown(rows)
            (args.out / f"{name}.md").write_text(table + "\n")
            chart(rows, title, args.out / f"{name}.png")
            print(f"\n{title}\n\n{table}")


if __name__ == "__main__":
    main()
