"""Triton's response cache at the ensemble (`export --response-cache`, `serve --cache-mb`), measured.

all-MiniLM-L6-v2 fp32 exported twice into one repository, with and without the cache, one
server (cache on), one-text requests over gRPC (perf_analyzer). Two workloads of short
queries (`export.tools.payloads.short_texts`): all unique (what the cache costs when it never
hits) and half repeated (half the requests, at random places, one of 100 popular texts). The
hit rate is read from Triton's statistics, not assumed: identical requests in flight together
all miss. Random places, because perf_analyzer's context i sends entries i, i + c, i + 2c, ...
at concurrency c: with every other entry repeated (the first version), half the contexts sent
only repeats, were answered from the cache in 0.2 ms each, and made 97% of the requests.
Every run gets texts no earlier run sent.

    .venv/bin/python -m benchmarks.response_cache [--seconds 10] [--concurrency 1 32]
"""

from __future__ import annotations

import itertools
import random
import tempfile
from pathlib import Path

import tritonclient.grpc as grpcclient

from benchmarks.common import Row, markdown, perf_row, served_parser, triton
from export.runtimes import ServingOptions
from export.text.default_model import default_model_path
from export.text.pipeline import TextExportOptions, export_text
from export.tools import payloads
from export.tools.perf_analyzer import write_input_data
from triton_embeddings.names import TEXT

PIPELINES = {"no cache": "minilm", "response cache": "minilm-cached"}
POPULAR = 100
REQUESTS = 60_000  # more than a measurement sends, so the unique texts stay unique


def workloads(run: int) -> dict[str, list[str]]:
    """Texts no other run sends (seeds from the run's number), but the popular ones."""
    popular = payloads.short_texts(POPULAR, seed=0)
    half = payloads.short_texts(REQUESTS, seed=2 * run + 1)
    repeated = random.Random(run).sample(range(REQUESTS), REQUESTS // 2)
    for i, position in enumerate(repeated):
        half[position] = popular[i % POPULAR]
    return {"unique": payloads.short_texts(REQUESTS, seed=2 * run + 2), "half repeated": half}


def hits(url: str, model: str) -> tuple[int, int]:
    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]["inference_stats"]
    return tuple(int(stats.get(key, {}).get("count", 0)) for key in ("cache_hit", "cache_miss"))


def main() -> None:
    args = served_parser(__doc__).parse_args()
    rows: list[tuple[str, Row, str]] = []
    with tempfile.TemporaryDirectory() as folder:
        work, repository = Path(folder), Path(folder) / "model_repository"
        for label, name in PIPELINES.items():
            serving = ServingOptions(response_cache=label == "response cache")
            export_text(TextExportOptions(str(default_model_path()), name, repository, serving=serving))
        with triton(repository, work / "triton.log") as server:
            url = server.options.grpc_url
            runs = itertools.product(range(args.rounds), args.concurrency, PIPELINES.items())
            for run, (_, level, (label, name)) in enumerate(runs):
                for workload, texts in workloads(run).items():
                    run_dir = work / f"{run}-{workload.replace(' ', '-')}"
                    run_dir.mkdir()
                    input_file = write_input_data(run_dir, TEXT, texts)
                    before = hits(url, name)
                    row = perf_row(f"{workload}, {label}", name, url, input_file, level, args.seconds, "grpc")
                    hit, miss = (now - then for now, then in zip(hits(url, name), before, strict=True))
                    rows.append((workload, row, f"{hit / (hit + miss):.0%}" if hit + miss else "-"))
    rows.sort(key=lambda item: (item[0] != "unique", item[1].concurrency))
    print(markdown([row for _, row, _ in rows]))
    print("\n| workload, pipeline | concurrency | cache hit rate |\n|---|---|---|")
    for _, row, rate in rows:
        print(f"| {row.system} | {row.concurrency} | {rate} |")


if __name__ == "__main__":
    main()
