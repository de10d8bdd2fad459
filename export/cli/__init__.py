"""`python -m export ...` or `triton-embeddings ...`: parse flags, call an exporter, the server
launcher or a tool, report.

Thin on purpose: no torch and no protobufs when imported. Each command's module imports what
it runs inside its run function (the exporters bring torch; `serve` starts without it).
Building the parser reads the flags' defaults from the modules that own them
(export.runtimes.options, export.repository.layout, export.serving.server), so those are
imported then, not here.

Exit codes: 0 done, 1 input refused (`error: ...`, one line, no traceback), 2 usage error.
"""

from __future__ import annotations

import argparse
import sys

from export import __version__
from export.cli import exporting, perf, pipelines, search, serve
from export.errors import UserError

DISTRIBUTION = "triton-embeddings"  # the console script's name, and the package's on PyPI


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """`prog`: how the usage lines name the program (default: the script's own name)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Export sentence-transformers and open_clip models as Triton pipelines, serve them, measure them.",
        epilog="Exit status: 0 done, 1 input refused (one `error:` line), 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"{DISTRIBUTION} {__version__}")
    commands = parser.add_subparsers(
        required=True, metavar="COMMAND", help="what to do; `%(prog)s COMMAND --help` for its flags"
    )
    exporting.add_commands(commands)
    search.add_commands(commands)
    serve.add_command(commands)
    perf.add_command(commands)
    pipelines.add_commands(commands)
    return parser


def parse_args(argv: list[str] | None = None, *, prog: str | None = None) -> argparse.Namespace:
    """The flags, with the defaults that follow from others filled in (a pipeline name from
    the model, perf's URL from the protocol). UserError when such a default cannot be had."""
    args = build_parser(prog).parse_args(argv)
    if resolve := getattr(args, "resolve", None):
        resolve(args)
    return args


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    try:
        args = parse_args(argv, prog=prog)
        return args.run(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
