"""Flags more than one command takes, each defined once: the repository, the PIPELINE
positional, on/off switches, and the exporters' serving and input-limit flags."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from export.precision import PRECISIONS

if TYPE_CHECKING:
    from export.runtimes.options import ServingOptions

PIPELINE_HELP = "pipeline name, as `list` shows it"


def add_repository(parser: argparse.ArgumentParser, help: str = "model repository folder") -> None:
    from export.repository.layout import DEFAULT_REPOSITORY

    parser.add_argument(
        "--repository", type=Path, default=DEFAULT_REPOSITORY, help=f"{help} (default: {DEFAULT_REPOSITORY})"
    )


def repository_location(value: str) -> Path | str:
    """A folder, or an object-storage URL (s3://, gs://, as://) kept as it is: Path would fold its '//'."""
    from export.serving.object_store import is_remote  # at parse time: the CLI imports no protobufs

    return value if is_remote(value) else Path(value)


def add_pipeline(parser: argparse.ArgumentParser, help: str = PIPELINE_HELP) -> None:
    """The PIPELINE positional of perf, stats and remove."""
    parser.add_argument("pipeline", metavar="PIPELINE", help=help)


PORTS = {"grpc": 8001, "http": 8000}  # serve's defaults


def add_server(parser: argparse.ArgumentParser, protocol_help: str = "how to call the server") -> None:
    """--url and --protocol of the commands that talk to a running server; `resolve_url` fills
    in the URL's default from the protocol."""
    parser.add_argument(
        "--url", help="server address (default: localhost:8001 for grpc, localhost:8000 for http: serve's ports)"
    )
    parser.add_argument("--protocol", choices=list(PORTS), default="grpc", help=f"{protocol_help} (default: grpc)")


def resolve_url(args: argparse.Namespace) -> None:
    if args.url is None:
        args.url = f"localhost:{PORTS[args.protocol]}"


def add_switch(parser: argparse.ArgumentParser, flag: str, help: str, *, default: bool = False) -> None:
    """An on/off flag, --x and --no-x, its default said in the help."""
    action = parser.add_argument(
        flag, action=argparse.BooleanOptionalAction, help=f"{help} (default: {'on' if default else 'off'})"
    )
    action.default = default  # set afterwards: Python 3.10 would append its own "(default: False)"


def _defaults(field: str) -> str:
    """'64 python, 128 onnxruntime': a flag's default per runtime, for --help."""
    from export.runtimes.options import DEFAULTS

    return ", ".join(f"{getattr(defaults, field)} {runtime}" for runtime, defaults in DEFAULTS.items())


def add_serving(parser: argparse.ArgumentParser, python_step: str) -> None:
    """Runtime, batching and precision flags, shared by every exporter."""
    from export.runtimes.options import DEFAULTS

    add_repository(parser)
    parser.add_argument(
        "--runtime",
        choices=list(DEFAULTS),
        default="python",
        help="python: onnxruntime in a Python-backend model (bundled server, CPU); "
        "onnxruntime: native onnxruntime_onnx platform of the NGC image (GPU); "
        "tensorrt: a TensorRT engine built now (needs tensorrt and a GPU here) (default: python)",
    )
    add_switch(parser, "--tensorrt", "onnxruntime runtime: ONNX Runtime's TensorRT execution provider")
    add_switch(parser, "--tensorrt-fp16", "TensorRT in fp16 (both TensorRT options)")
    parser.add_argument("--tensorrt-cache", metavar="DIR", help="server-side folder to cache TensorRT engines in")
    for axis, default in (("batch", "1, half and all of max batch size"), ("sequence", "1, 32 and max length")):
        parser.add_argument(
            f"--tensorrt-{axis}",
            type=_triple,
            metavar="MIN,OPT,MAX",
            help=f"--runtime tensorrt optimization profile, {axis} axis (default: {default})",
        )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        metavar="N",
        help=f"largest batch per model (default: {_defaults('max_batch_size')})",
    )
    parser.add_argument(
        "--instances", type=int, metavar="N", help=f"encoder instances (default: {_defaults('encoder_instances')})"
    )
    parser.add_argument(
        f"--{python_step}-instances",
        type=int,
        metavar="N",
        help=f"{python_step} instances (default: {_defaults('tokenizer_instances')})",
    )
    parser.add_argument(
        "--max-queue-delay-us",
        type=int,
        metavar="N",
        help=f"dynamic batching delay in microseconds (default: {_defaults('max_queue_delay_us')})",
    )
    parser.add_argument(
        "--max-queue-size",
        type=int,
        metavar="N",
        help="requests a step lets wait before rejecting more, on the pipeline's first step only while "
        "--max-wait-ms bounds the wait; 0: unbounded (default: none with --max-wait-ms, else 4 batches)",
    )
    parser.add_argument(
        "--max-wait-ms",
        type=int,
        metavar="N",
        help="python runtime: refuse at once, as overloaded (retryable), a request whose texts or images would "
        "wait longer than this for the encoder, counting queued work in tokens and images; 0: no such bound "
        f"(default: {DEFAULTS['python'].max_wait_ms})",
    )
    parser.add_argument(
        "--queue-timeout-ms",
        type=int,
        metavar="N",
        help="reject a request that waited this long in a step's queue, on the pipeline's first step only "
        f"while --max-wait-ms bounds the wait; 0: never (default: none with --max-wait-ms, else "
        f"{_defaults('queue_timeout_ms')})",
    )
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        metavar="N",
        default=0,
        help="onnxruntime threads per encoder instance, python runtime "
        "(default: all CPUs; int8: the CPUs split among the instances)",
    )
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        metavar="N",
        help="python runtime: run a merged batch in groups of similar length, each within this many "
        f"token positions; 0: one group (default: {DEFAULTS['python'].max_batch_tokens})",
    )
    # None: the runtime's default, so these two are switches without a default of their own.
    parser.add_argument(
        "--intra-op-spinning",
        action=argparse.BooleanOptionalAction,
        help="python runtime: onnxruntime threads busy-wait between parallel sections "
        f"(default: {'on' if DEFAULTS['python'].intra_op_spinning else 'off'})",
    )
    parser.add_argument(
        "--response-cache",
        action=argparse.BooleanOptionalAction,
        help="the models clients call (ensembles, a one-step pipeline's model) answer a request identical to an "
        "earlier one from the server's cache (serve --cache-mb) "
        f"(default: {'on' if DEFAULTS['python'].response_cache else 'off'})",
    )
    parser.add_argument("--opset", type=int, metavar="N", default=17, help="ONNX opset (default: 17)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="encoder precision; fp16 keeps fp32 inputs, outputs and reductions (for GPUs); int8: the "
        "python runtime (CPU), text encoders and CLIP towers, cosine >= 0.99 to fp32 (default: fp32)",
    )


def _triple(text: str) -> tuple[int, int, int]:
    values = tuple(int(part) for part in text.split(","))
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected MIN,OPT,MAX, got {text!r}")
    return values


def serving_options(args: argparse.Namespace, step_instances: int | None) -> ServingOptions:
    """The ServingOptions the serving flags ask for."""
    from export.runtimes.options import ServingOptions

    return ServingOptions(
        runtime=args.runtime,
        max_batch_size=args.max_batch_size,
        instances=args.instances,
        step_instances=step_instances,
        max_queue_delay_us=args.max_queue_delay_us,
        max_queue_size=args.max_queue_size,
        queue_timeout_ms=args.queue_timeout_ms,
        max_wait_ms=args.max_wait_ms,
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


def add_limits(parser: argparse.ArgumentParser, *, images: bool) -> None:
    """Input limits, enforced per item by the served steps (docs/reliability.md)."""
    parser.add_argument("--max-text-bytes", type=int, metavar="N", help="refuse longer texts (default: 1 MiB)")
    if images:
        parser.add_argument(
            "--max-image-bytes", type=int, metavar="N", help="refuse larger image files (default: 32 MiB)"
        )
        parser.add_argument(
            "--max-pixels", type=int, metavar="N", help="refuse larger decoded images (default: 89.5 million)"
        )


def limits(args: argparse.Namespace) -> dict[str, int]:
    """The limit flags given; the others keep the exporters' defaults."""
    names = ("max_text_bytes", "max_image_bytes", "max_pixels")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
