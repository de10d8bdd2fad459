"""How requests reach the server: gRPC, gRPC streaming, HTTP with binary tensors, and both
with the tensors in system shared memory (zero-copy for a client on the same machine).

all-MiniLM-L6-v2 fp32 with the export defaults, one server, one-text requests of 6-18 words
(`export.tools.payloads.short_texts`), perf_analyzer as the client, each transport in turn at each
concurrency (and again per round). JSON bodies are in the side-by-side benchmark (wrk).

    .venv/bin/python -m benchmarks.transport [--seconds 10] [--concurrency 1 32] [--rounds 2]
"""

from __future__ import annotations

import itertools
import sys
import tempfile
from pathlib import Path

from benchmarks.common import Row, markdown, perf_row, served_parser, triton
from export.errors import UserError
from export.text.default_model import default_model_path
from export.text.pipeline import TextExportOptions, export_text
from export.tools import payloads
from export.tools.perf_analyzer import write_input_data
from triton_embeddings.names import DEFAULT_TEXT_PIPELINE, TEXT

# Room for the largest output (one 384-d fp32 embedding) in each shared-memory region.
SHARED_MEMORY = ("--shared-memory", "system", "--output-shared-memory-size", "4096")
TRANSPORTS = {
    "grpc": ("grpc", ()),
    "grpc streaming": ("grpc", ("--streaming",)),
    "grpc, system shared memory": ("grpc", SHARED_MEMORY),
    "http, binary tensors": ("http", ()),
    "http, system shared memory": ("http", SHARED_MEMORY),
}


def main() -> None:
    args = served_parser(__doc__, rounds=2).parse_args()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as folder:
        work, repository = Path(folder), Path(folder) / "model_repository"
        export_text(TextExportOptions(str(default_model_path()), DEFAULT_TEXT_PIPELINE, repository))
        input_file = write_input_data(work, TEXT, payloads.short_texts(2000, seed=7))
        with triton(repository, work / "triton.log") as server:
            urls = {"grpc": server.options.grpc_url, "http": server.options.http_url}
            runs = itertools.product(args.concurrency, range(args.rounds), TRANSPORTS.items())
            for level, _, (label, (protocol, flags)) in runs:
                url, seconds = urls[protocol], args.seconds
                try:
                    rows.append(
                        perf_row(label, DEFAULT_TEXT_PIPELINE, url, input_file, level, seconds, protocol, flags)
                    )
                except UserError as error:  # a hung perf_analyzer: say so, measure the rest
                    print(f"{label}, concurrency {level}: {error}", file=sys.stderr)
    print(markdown(rows))


if __name__ == "__main__":
    main()
