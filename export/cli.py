"""`python -m export ...`: parse flags, call the exporter or the server launcher, report.

Thin on purpose: no protobufs and no torch here (the text exporter is imported only when the
`text` command runs, so `serve` starts without loading torch).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from export.errors import UserError
from export.precision import PRECISIONS
from export.repository.layout import DEFAULT_REPOSITORY
from export.runtimes import DEFAULTS, RUNTIMES, ServingOptions
from export.serving.server import CONTROL_MODES, ServerOptions, TritonServer, serve_until_stopped
from triton_embeddings.names import DEFAULT_TEMPLATE


def _defaults(field: str) -> str:
    """'64 python, 128 onnxruntime': a flag's default per runtime, for --help."""
    return ", ".join(f"{getattr(defaults, field)} {runtime}" for runtime, defaults in DEFAULTS.items())


def _add_serving_flags(parser: argparse.ArgumentParser, python_step: str) -> None:
    """Runtime and batching flags, shared by every exporter."""
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="model repository folder")
    parser.add_argument(
        "--runtime",
        choices=list(RUNTIMES),
        default="python",
        help="python: onnxruntime in a Python-backend model (bundled server, CPU); "
        "onnxruntime: native onnxruntime_onnx platform of the NGC image (GPU); "
        "tensorrt: a TensorRT engine built now (needs tensorrt and a GPU here)",
    )
    parser.add_argument(
        "--tensorrt", action="store_true", help="onnxruntime runtime: ONNX Runtime's TensorRT execution provider"
    )
    parser.add_argument("--tensorrt-fp16", action="store_true", help="TensorRT in fp16 (both TensorRT options)")
    parser.add_argument("--tensorrt-cache", metavar="DIR", help="server-side folder to cache TensorRT engines in")
    for axis, default in (("batch", "1, half and all of max batch size"), ("sequence", "1, 32 and max length")):
        parser.add_argument(
            f"--tensorrt-{axis}",
            type=_triple,
            metavar="MIN,OPT,MAX",
            help=f"--runtime tensorrt optimization profile, {axis} axis (default: {default})",
        )
    parser.add_argument(
        "--max-batch-size", type=int, help=f"largest batch per model (default: {_defaults('max_batch_size')})"
    )
    parser.add_argument("--instances", type=int, help=f"encoder instances (default: {_defaults('encoder_instances')})")
    parser.add_argument(
        f"--{python_step}-instances",
        type=int,
        help=f"{python_step} instances (default: {_defaults('tokenizer_instances')})",
    )
    parser.add_argument(
        "--max-queue-delay-us",
        type=int,
        help=f"dynamic batching delay in microseconds (default: {_defaults('max_queue_delay_us')})",
    )
    parser.add_argument(
        "--max-queue-size",
        type=int,
        help="requests each step lets wait before rejecting more; 0: unbounded (default: 4 batches)",
    )
    parser.add_argument(
        "--queue-timeout-ms",
        type=int,
        help=f"reject a request that waited this long in a step's queue; 0: never "
        f"(default: {_defaults('queue_timeout_ms')})",
    )
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=0,
        help="onnxruntime threads per encoder instance, python runtime "
        "(default: all CPUs; int8: the CPUs split among the instances)",
    )
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        help="python runtime: run a merged batch in groups of similar length, each within this many "
        f"token positions; 0: one group (default: {DEFAULTS['python'].max_batch_tokens})",
    )
    parser.add_argument(
        "--intra-op-spinning",
        action=argparse.BooleanOptionalAction,
        help="python runtime: onnxruntime threads busy-wait between parallel sections "
        f"(default: {'on' if DEFAULTS['python'].intra_op_spinning else 'off'})",
    )
    parser.add_argument(
        "--response-cache",
        action=argparse.BooleanOptionalAction,
        help="ensembles answer a request identical to an earlier one from the server's cache (serve --cache-mb) "
        f"(default: {'on' if DEFAULTS['python'].response_cache else 'off'})",
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="encoder precision; fp16 keeps fp32 inputs, outputs and reductions (for GPUs); int8: text "
        "pipelines on the python runtime (CPU), cosine >= 0.99 to fp32 (default: fp32)",
    )


def _triple(text: str) -> tuple[int, int, int]:
    values = tuple(int(part) for part in text.split(","))
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected MIN,OPT,MAX, got {text!r}")
    return values


def _serving_options(args: argparse.Namespace, step_instances: int | None) -> ServingOptions:
    return ServingOptions(
        runtime=args.runtime,
        max_batch_size=args.max_batch_size,
        instances=args.instances,
        step_instances=step_instances,
        max_queue_delay_us=args.max_queue_delay_us,
        max_queue_size=args.max_queue_size,
        queue_timeout_ms=args.queue_timeout_ms,
        intra_op_threads=args.intra_op_threads,
        max_batch_tokens=args.max_batch_tokens,
        intra_op_spinning=args.intra_op_spinning,
        response_cache=args.response_cache,
        tensorrt=args.tensorrt,
        tensorrt_fp16=args.tensorrt_fp16,
        tensorrt_cache=args.tensorrt_cache,
        tensorrt_batch=args.tensorrt_batch,
        tensorrt_sequence=args.tensorrt_sequence,
    )


def _add_limit_flags(parser: argparse.ArgumentParser, *, images: bool) -> None:
    """Input limits, enforced per item by the served steps (docs/reliability.md)."""
    parser.add_argument("--max-text-bytes", type=int, help="refuse longer texts (default: 1 MiB)")
    if images:
        parser.add_argument("--max-image-bytes", type=int, help="refuse larger image files (default: 32 MiB)")
        parser.add_argument("--max-pixels", type=int, help="refuse larger decoded images (default: 89.5 million)")


def _limits(args: argparse.Namespace) -> dict[str, int]:
    """The limit flags given; the others keep the exporters' defaults."""
    names = ("max_text_bytes", "max_image_bytes", "max_pixels")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _add_text_command(commands: argparse._SubParsersAction) -> None:
    text = commands.add_parser(
        "text",
        help="export a sentence-transformers model as a Triton text pipeline",
        description="Writes NAME_tokenizer, NAME_encoder and the ensemble NAME (TEXT -> EMBEDDING).",
    )
    text.add_argument("model", help="Hugging Face hub id or local sentence-transformers folder")
    text.add_argument("--name", required=True, help="pipeline (ensemble) name clients call")
    text.add_argument("--max-length", type=int, help="truncate to this many tokens (default: the model's)")
    _add_serving_flags(text, python_step="tokenizer")
    text.add_argument("--prompt-name", help="prepend this named prompt of the model to every text")
    _add_limit_flags(text, images=False)
    text.add_argument(
        "--trust-remote-code", action="store_true", help="allow the model's own Python code (off by default)"
    )
    text.set_defaults(run=_run_text)


def _add_clip_command(commands: argparse._SubParsersAction) -> None:
    clip = commands.add_parser(
        "clip",
        help="export an open_clip model as Triton text, image and zero-shot classification pipelines",
        description="Writes NAME_text (TEXT -> EMBEDDING), NAME_image (IMAGE -> EMBEDDING) and, "
        "with --labels, NAME_classify (IMAGE -> LABEL, SCORES), with their steps.",
    )
    clip.add_argument("arch", help="open_clip model name (ViT-B-32, RN50, ...), or hf-hub:/local-dir: folder")
    clip.add_argument("--name", required=True, help="pipeline name prefix")
    clip.add_argument(
        "--pretrained",
        help="open_clip pretrained tag (e.g. openai, laion2b_s34b_b79k), a checkpoint file, "
        "or none for random weights; needed for built-in architecture names",
    )
    clip.add_argument("--labels", type=Path, help="file of zero-shot labels, one a line: adds NAME_classify")
    clip.add_argument(
        "--template",
        action="append",
        help=f"prompt per label, {{}} for the label; repeat to average prompts (default: {DEFAULT_TEMPLATE!r})",
    )
    clip.add_argument(
        "--no-draft",
        action="store_true",
        help="always decode JPEGs at full size (default: at a reduced DCT scale when at least twice the target)",
    )
    _add_serving_flags(clip, python_step="preprocess")
    _add_limit_flags(clip, images=True)
    clip.set_defaults(run=_run_clip)


def _run_clip(args: argparse.Namespace) -> int:
    from export.clip.pipeline import ClipExportOptions, export_clip, read_labels

    options = ClipExportOptions(
        arch=args.arch,
        name=args.name,
        pretrained=args.pretrained,
        repository=args.repository,
        serving=_serving_options(args, args.preprocess_instances),
        labels=read_labels(args.labels) if args.labels else (),
        templates=tuple(args.template or (DEFAULT_TEMPLATE,)),
        opset=args.opset,
        precision=args.precision,
        draft=not args.no_draft,
        **_limits(args),
    )
    result = export_clip(options)
    print(
        f"wrote {', '.join(result.record.models)} to {result.repository}: "
        f"{result.record.embedding_size}-d embeddings; vs open_clip: text {result.text}, image {result.image}"
    )
    return 0


def _add_perf_command(commands: argparse._SubParsersAction) -> None:
    perf = commands.add_parser(
        "perf",
        help="measure a served pipeline with perf_analyzer at several concurrencies",
        description="Runs perf_analyzer once per concurrency with the payload file the exporter wrote beside "
        "the pipeline, prints its report for each, then a summary table. Needs a running server.",
    )
    perf.add_argument("model", help="pipeline (ensemble) name")
    perf.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY, help="where the pipeline was exported")
    perf.add_argument("--input-data", type=Path, help="perf_analyzer input JSON (default: the pipeline's own)")
    perf.add_argument("--url", default="localhost:8001", help="server address for --protocol (default: gRPC port)")
    perf.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    perf.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    perf.add_argument("--measurement-interval", type=int, default=5000, help="milliseconds per window")
    perf.add_argument(
        "--stability-percentage", type=int, default=50, help="how far windows may differ and still count as stable"
    )
    perf.set_defaults(run=_run_perf)


def _run_perf(args: argparse.Namespace) -> int:
    from export.tools import perf_analyzer

    input_file = args.input_data or args.repository / args.model / perf_analyzer.INPUT_FILE
    if not input_file.is_file():
        raise UserError(f"no {input_file}: export the pipeline again, or pass --input-data")
    rows = []
    with tempfile.TemporaryDirectory() as reports:
        for level in args.concurrency:
            measurement, report = perf_analyzer.measure(
                args.model,
                args.url,
                input_file,
                level,
                Path(reports),
                protocol=args.protocol,
                measurement_ms=args.measurement_interval,
                stability_percentage=args.stability_percentage,
            )
            print(report, flush=True)
            rows.append(measurement)
    print(f"{args.model} over {args.protocol}, one item per request\n")
    print("| concurrency | items/s | p50 ms | p99 ms | perf_analyzer CPU |\n|---|---|---|---|---|")
    for m in rows:
        print(f"| {m.concurrency} | {m.per_second:.1f} | {m.p50_ms:.2f} | {m.p99_ms:.2f} | {m.client_cpu:.0%} |")
    return 0


def _add_lifecycle_commands(commands: argparse._SubParsersAction) -> None:
    listing = commands.add_parser("list", help="the pipelines in a repository")
    listing.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    listing.add_argument("--json", action="store_true", help="one JSON list, for scripts")
    listing.set_defaults(run=_run_list)

    remove = commands.add_parser("remove", help="delete a pipeline: its ensembles and every step, nothing else")
    remove.add_argument("name", help="pipeline name, as `list` shows it")
    remove.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    remove.set_defaults(run=_run_remove)

    stats = commands.add_parser("stats", help="per-step statistics of a served pipeline (statistics API)")
    stats.add_argument("name", help="pipeline or ensemble name")
    stats.add_argument("--url", default="localhost:8001", help="the server's gRPC address")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(run=_run_stats)


def _run_list(args: argparse.Namespace) -> int:
    from export.repository.records import pipelines

    found = pipelines(args.repository)
    if args.json:
        print(json.dumps([asdict(record) for record in found.values()]))
        return 0
    print("| pipeline | kind | embedding size | runtime | precision | ensembles | steps |")
    print("|---|---|---|---|---|---|---|")
    for r in found.values():
        row = [r.name, r.kind, r.embedding_size, r.runtime, r.precision, ", ".join(r.ensembles), ", ".join(r.steps)]
        print("| " + " | ".join(map(str, row)) + " |")
    return 0


def _run_remove(args: argparse.Namespace) -> int:
    from export.repository.records import remove_pipeline

    record = remove_pipeline(args.repository, args.name)
    print(f"removed {record.name}: {', '.join(record.models)}")
    return 0


def _run_stats(args: argparse.Namespace) -> int:
    from export.tools.stats import as_json, pipeline_stats, table

    record, rows = pipeline_stats(args.url, args.name)
    print(as_json(record, rows) if args.json else f"{record.name} ({record.kind})\n\n{table(rows)}")
    return 0


def _add_serve_command(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="run Triton (from the nvidia-pytriton wheel) on a repository")
    serve.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--model-control-mode", choices=CONTROL_MODES, default="none")
    serve.add_argument(
        "--load-model", action="append", default=[], metavar="NAME", help="with explicit mode: load at start"
    )
    serve.add_argument("--log-verbose", type=int, default=0)
    serve.add_argument(
        "--cache-mb",
        type=int,
        default=ServerOptions.cache_mb,
        help="response cache for ensembles exported with --response-cache; 0: none "
        f"(default: {ServerOptions.cache_mb})",
    )
    serve.add_argument(
        "--admin-key",
        default=os.environ.get("TRITON_ADMIN_KEY"),
        help="require this key (header admin-key) for the repository, logging, trace and shared-memory "
        "APIs; required when --host is not loopback (default: $TRITON_ADMIN_KEY)",
    )
    serve.set_defaults(run=_run_serve)


def _run_text(args: argparse.Namespace) -> int:
    from export.text.pipeline import TextExportOptions, export_text

    options = TextExportOptions(
        model=args.model,
        name=args.name,
        repository=args.repository,
        serving=_serving_options(args, args.tokenizer_instances),
        max_length=args.max_length,
        opset=args.opset,
        precision=args.precision,
        prompt_name=args.prompt_name,
        trust_remote_code=args.trust_remote_code,
        **_limits(args),
    )
    result = export_text(options)
    print(
        f"wrote {', '.join(result.record.models)} to {result.repository}: "
        f"{result.record.embedding_size}-d embeddings, up to {result.max_length} tokens; "
        f"served tokenizer + ONNX vs sentence-transformers: {result.agreement}"
    )
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run_serve(args: argparse.Namespace) -> int:
    options = ServerOptions(
        repository=args.repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        model_control_mode=args.model_control_mode,
        load_models=tuple(args.load_model),
        log_verbose=args.log_verbose,
        admin_key=args.admin_key,
        cache_mb=args.cache_mb,
    )
    server = TritonServer(options)  # its log goes to our stdout
    signal.signal(signal.SIGTERM, _interrupt)

    def ready() -> None:
        print(
            f"\nTriton is ready:\n  HTTP    http://{options.http_url}/v2/models/<name>/infer\n"
            f"  gRPC    {options.grpc_url}\n  metrics {options.metrics_url}\nCtrl-C stops it.",
            flush=True,
        )

    try:
        return serve_until_stopped(server, ready)
    except KeyboardInterrupt:
        print("stopping tritonserver", file=sys.stderr, flush=True)
        return 0
    finally:
        server.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    _add_text_command(commands)
    _add_clip_command(commands)
    _add_serve_command(commands)
    _add_perf_command(commands)
    _add_lifecycle_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
