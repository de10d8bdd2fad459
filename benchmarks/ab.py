"""Before and after, side by side: one ensemble served from two model repositories in turn,
measured with perf_analyzer (gRPC) on the same inputs, alternating A, B, A, B so that a
drift of this shared machine lands on both.

For changes to what a repository holds (a step rewritten, a config setting): export the
"before" repository from the old commit (a git worktree), the "after" one from the new, and
compare. Inputs: texts (`--texts short`: 6-18 words; `--texts mixed`: queries to passages
past 256 tokens, payloads.LENGTH_MIX) or 640x480 JPEGs (`--images`). Prints a markdown table.

    .venv/bin/python -m benchmarks.ab BEFORE_REPO BEFORE_MODEL AFTER_REPO AFTER_MODEL --images \\
        [--concurrency 1 8] [--seconds 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.common import Row, markdown, perf_row, triton
from export.tools import payloads
from export.tools.perf_analyzer import write_input_data
from triton_embeddings.names import IMAGE, TEXT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before_repository", type=Path)
    parser.add_argument("before_model")
    parser.add_argument("after_repository", type=Path)
    parser.add_argument("after_model")
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--texts", choices=("short", "mixed"), help="texts, one a request")
    kind.add_argument("--images", action="store_true", help="640x480 JPEGs, one a request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="A, B alternations")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ab-"))
    if args.images:
        input_file = write_input_data(work, IMAGE, payloads.images(32, seed=3, sizes=((640, 480),)))
    elif args.texts == "short":
        input_file = write_input_data(work, TEXT, payloads.short_texts(256, seed=3))
    else:
        input_file = write_input_data(work, TEXT, payloads.texts(256, seed=3))
    sides = (("before", args.before_repository, args.before_model), ("after", args.after_repository, args.after_model))
    rows: dict[tuple[str, int], list[Row]] = {}
    for round_ in range(args.rounds):
        for label, repository, model in sides:
            with triton(repository, work / f"{label}-{round_}.log") as server:
                for level in args.concurrency:
                    row = perf_row(label, model, server.options.grpc_url, input_file, level, args.seconds, "grpc")
                    rows.setdefault((label, level), []).append(row)
    best = [max(found, key=lambda row: row.per_second) for found in rows.values()]  # best round of each
    print(markdown(sorted(best, key=lambda row: (row.concurrency or 0, row.system != "before"))))
    for level in args.concurrency:
        before, after = (max(rows[(label, level)], key=lambda row: row.per_second) for label in ("before", "after"))
        print(
            f"\nconcurrency {level}: after/before throughput {after.per_second / before.per_second:.3f}, "
            f"p50 {after.p50_ms - before.p50_ms:+.2f} ms"
        )


if __name__ == "__main__":
    main()
