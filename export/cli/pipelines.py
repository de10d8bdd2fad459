"""`list`, `remove` and `stats`: the pipelines of a repository, and how a served one is doing."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from export.cli import flags

if TYPE_CHECKING:
    from export.repository.records import PipelineRecord


def add_commands(commands: argparse._SubParsersAction) -> None:
    listing = commands.add_parser("list", help="the pipelines in a repository")
    flags.add_repository(listing)
    flags.add_switch(listing, "--json", "one JSON list, for scripts")
    listing.set_defaults(run=_run_list)

    remove = commands.add_parser("remove", help="delete a pipeline: its ensembles and every step, nothing else")
    flags.add_pipeline(remove)
    flags.add_repository(remove)
    remove.set_defaults(run=_run_remove)

    stats = commands.add_parser(
        "stats",
        help="per-step statistics of a served pipeline (statistics API)",
        description="Requests, executions, average batch, queue and compute time of each model of the pipeline. "
        "Takes a pipeline or one of its ensembles; the name is looked up in --repository when the pipeline is "
        "there, else on the server.",
    )
    flags.add_pipeline(stats)
    flags.add_repository(stats, "where the pipeline was exported")
    stats.add_argument("--url", default="localhost:8001", help="the server's gRPC address (default: localhost:8001)")
    flags.add_switch(stats, "--json", "one JSON object, for scripts")
    stats.set_defaults(run=_run_stats)


def find_record(repository: Path, name: str) -> PipelineRecord | None:
    """The pipeline of `repository` named `name` or owning an ensemble of that name."""
    from export.repository.records import pipelines

    if not repository.is_dir():
        return None
    return next((r for r in pipelines(repository).values() if name in (r.name, *r.ensembles)), None)


def _run_list(args: argparse.Namespace) -> int:
    from export.repository.records import pipelines

    found = pipelines(args.repository)
    if args.json:
        print(json.dumps([asdict(record) for record in found.values()]))
        return 0
    print("| pipeline | kind | embedding size | runtime | precision | clients call | steps |")
    print("|---|---|---|---|---|---|---|")
    for r in found.values():
        row = [r.name, r.kind, r.embedding_size, r.runtime, r.precision, ", ".join(r.ensembles), ", ".join(r.steps)]
        print("| " + " | ".join(map(str, row)) + " |")
    return 0


def _run_remove(args: argparse.Namespace) -> int:
    from export.repository.records import remove_pipeline

    record = remove_pipeline(args.repository, args.pipeline)
    print(f"removed {record.name}: {', '.join(record.models)}")
    return 0


def _run_stats(args: argparse.Namespace) -> int:
    from export.tools.stats import as_json, pipeline_stats, table

    # The repository's record when it has the pipeline; else the server's.
    record, rows = pipeline_stats(args.url, args.pipeline, find_record(args.repository, args.pipeline))
    print(as_json(record, rows) if args.json else f"{record.name} ({record.kind})\n\n{table(rows)}")
    return 0
