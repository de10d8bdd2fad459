"""Length groups in the python runtime's encoder (`--max-batch-tokens`), measured.

Two payloads, all-MiniLM-L6-v2 fp32: texts of mixed length, as `export.tools.payloads.texts` draws
them (40% 2-8 words, 30% 10-25, 20% 40-120, 10% 300-500, cut at 256 tokens), and short
queries (`export.tools.payloads.short_texts`, 6-18 words).

1. In-process, the encoder's own computation: batches of 64 such texts through onnxruntime,
   padded to the longest row (one group, what the encoder did before) against groups of
   similar length within each token budget (export/steps/onnx_encoder/padding.py).
   The budget 0 row is that one group.
2. Served: the same model exported once per budget into one repository, one server,
   one-text requests over gRPC (perf_analyzer) at each concurrency, the pipelines measured
   one after the other.

    .venv/bin/python -m benchmarks.length_groups [--budgets 0 512 2048] [--seconds 10]
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.common import CPUS, Row, markdown, perf_row, served_parser, time_calls, triton
from export.repository.config import read_config
from export.runtimes import ServingOptions
from export.steps.onnx_encoder.padding import extents, length_groups, trim
from export.steps.tokenizer.tokenization import token_arrays
from export.steps.writers import TokenizerSettings
from export.text.default_model import default_model_path
from export.text.pipeline import TextExportOptions, export_text
from export.tools import payloads
from export.tools.perf_analyzer import write_input_data
from triton_embeddings.names import ATTENTION_MASK, TEXT, TextPipelineNames

BATCH = 64


def pipeline(budget: int) -> str:
    return f"minilm-tokens-{budget}"


def label(budget: int) -> str:
    return "one group" if budget <= 0 else f"groups within {budget} tokens"


def in_process(repository: Path, texts: list[str], budgets: list[int], seconds: float) -> list[Row]:
    names = TextPipelineNames(pipeline(budgets[0]))
    tokenizer = TokenizerSettings.from_model(repository / names.tokenizer).load()
    dtypes = {output.name: np.int64 for output in read_config(repository / names.tokenizer).output}
    options = ort.SessionOptions()
    options.intra_op_num_threads = CPUS
    session = ort.InferenceSession(str(repository / names.encoder / "1" / "model.onnx"), options)
    batches = [
        token_arrays(tokenizer.encode_batch(texts[start : start + BATCH]), dtypes)
        for start in range(0, len(texts) - BATCH + 1, BATCH)
    ]
    rows = []
    for budget in budgets:

        def run(i: int, budget: int = budget) -> None:
            batch = batches[i % len(batches)]
            lengths = extents(batch[ATTENTION_MASK.name], left=False)
            for group in length_groups(lengths, budget):
                session.run(None, trim(batch, group, int(lengths[group].max()), left=False))

        rate, p50, p99 = time_calls(run, BATCH, seconds)
        rows.append(Row(f"onnxruntime in-process, batch {BATCH}, {label(budget)}", None, rate, p50, p99))
    return rows


def main() -> None:
    parser = served_parser(__doc__)
    parser.add_argument("--budgets", type=int, nargs="+", default=[0, 512, 2048])
    parser.add_argument("--payloads", nargs="+", choices=["mixed", "short"], default=["mixed", "short"])
    args = parser.parse_args()
    every = {
        "mixed": ("mixed lengths", payloads.texts(1024, seed=3)),
        "short": ("short queries", payloads.short_texts(1024, seed=3)),
    }
    payloads_ = dict(every[name] for name in args.payloads)
    with tempfile.TemporaryDirectory() as folder:
        work, repository = Path(folder), Path(folder) / "model_repository"
        for budget in args.budgets:
            serving = ServingOptions(max_batch_tokens=budget)
            export_text(TextExportOptions(str(default_model_path()), pipeline(budget), repository, serving=serving))
        tables = {name: in_process(repository, texts, args.budgets, args.seconds) for name, texts in payloads_.items()}
        with triton(repository, work / "triton.log") as server:
            url = server.options.grpc_url
            for name, texts in payloads_.items():
                (work / name.replace(" ", "-")).mkdir()
                input_file = write_input_data(work / name.replace(" ", "-"), TEXT, texts)
                for level in args.concurrency:
                    for _, budget in itertools.product(range(args.rounds), args.budgets):
                        system = f"Triton grpc, {label(budget)}"
                        tables[name].append(
                            perf_row(system, pipeline(budget), url, input_file, level, args.seconds, "grpc")
                        )
    for name, rows in tables.items():
        print(f"\n{name}\n\n{markdown(rows)}")


if __name__ == "__main__":
    main()
