"""`perf`: measure a served pipeline with perf_analyzer at several concurrencies."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from export.cli import flags
from export.cli.pipelines import find_record
from export.errors import UserError


def add_command(commands: argparse._SubParsersAction) -> None:
    perf = commands.add_parser(
        "perf",
        help="measure a served pipeline with perf_analyzer at several concurrencies",
        description="Runs perf_analyzer once per concurrency with the payload file the exporter wrote beside "
        "the pipeline, prints its report for each, then a summary table. Needs a running server. For a "
        "pipeline of several ensembles (CLIP), name the ensemble: NAME_text, NAME_image or NAME_classify.",
    )
    flags.add_pipeline(perf)
    flags.add_repository(perf, "where the pipeline was exported")
    perf.add_argument(
        "--input-data", type=Path, metavar="FILE", help="perf_analyzer input JSON (default: the pipeline's own)"
    )
    flags.add_server(perf, "how perf_analyzer calls the server")
    perf.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 2, 4, 8, 16, 32],
        metavar="N",
        help="requests in flight, one measurement each (default: 1 2 4 8 16 32)",
    )
    perf.add_argument(
        "--measurement-interval", type=int, metavar="MS", default=5000, help="milliseconds per window (default: 5000)"
    )
    perf.add_argument(
        "--stability-percentage",
        type=int,
        metavar="PERCENT",
        default=50,
        help="how far windows may differ and still count as stable (default: 50)",
    )
    perf.set_defaults(run=_run, resolve=flags.resolve_url)


def _model(args: argparse.Namespace) -> str:
    """The model perf_analyzer calls: the pipeline's ensemble, refusing a choice of several."""
    record = find_record(args.repository, args.pipeline)
    if record is not None and args.pipeline == record.name and len(record.ensembles) > 1:
        raise UserError(f"{record.name} has several ensembles ({', '.join(record.ensembles)}): name one")
    return args.pipeline


def _run(args: argparse.Namespace) -> int:
    from export.tools import perf_analyzer

    model = _model(args)
    input_file = args.input_data or args.repository / model / perf_analyzer.INPUT_FILE
    if not input_file.is_file():
        raise UserError(f"no {input_file}: export the pipeline again, or pass --input-data")
    rows = []
    with tempfile.TemporaryDirectory() as reports:
        for level in args.concurrency:
            measurement, report = perf_analyzer.measure(
                model,
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
    print(f"{model} over {args.protocol}, one item per request\n")
    print("| concurrency | items/s | p50 ms | p99 ms | perf_analyzer CPU |\n|---|---|---|---|---|")
    for m in rows:
        print(f"| {m.concurrency} | {m.per_second:.1f} | {m.p50_ms:.2f} | {m.p99_ms:.2f} | {m.client_cpu:.0%} |")
    return 0
