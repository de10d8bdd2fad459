"""`--precision int8` against fp32 and onnxruntime's own dynamic quantization, in-process.

all-MiniLM-L6-v2. For each encoder:
- quality, the bar of issue 6 (tests/test_int8.py checks it through the server): cosine to
  sentence-transformers fp32 for each of 1,000 varied texts (tests/texts.py), batches of 32;
  top-10 neighbour overlap, 200 queries over 800 documents; and how far a text's embedding
  moves with the texts it is batched with (64 texts alone vs in their batches of 32);
- speed, in rounds with every encoder in turn (this machine's speed drifts between rounds;
  compare within one): batches of 32 and of 1 short query (6-18 words), onnxruntime on all
  cores, the in-process ceiling the served pipeline is measured against.

    .venv/bin/python -m benchmarks.int8 [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.common import onnx_text_encoder, time_calls
from export.runtimes import ONNX_FILE
from export.text.default_model import default_model_path
from export.text.pipeline import TextExportOptions, export_text
from export.tools import payloads
from export.tools.compare import cosine, top10_overlap
from export.tools.corpus import corpus
from triton_embeddings.names import TextPipelineNames

QUERIES = 200  # of the 1,000 texts; the other 800 are the documents
BATCH = 32


def encoders(root: Path) -> dict[str, Callable[[list[str]], np.ndarray]]:
    """Encoder name -> in-process embed function; fp32 and int8 as `export` writes them."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    repository = root / "repository"
    model = str(default_model_path())
    for precision in ("fp32", "int8"):
        export_text(TextExportOptions(model=model, name=precision, repository=repository, precision=precision))
    fp32, int8 = TextPipelineNames("fp32"), TextPipelineNames("int8")
    found = {"fp32": repository / fp32.encoder, "--precision int8 (per-token)": repository / int8.encoder}
    library = {  # onnxruntime's quantizer: defaults, and its best setting measured here
        "quantize_dynamic, defaults": {},
        "quantize_dynamic, per-channel, MatMul only": {"per_channel": True, "op_types_to_quantize": ["MatMul"]},
    }
    for name, options in library.items():
        target = root / name.replace(" ", "_").replace(",", "") / "1" / ONNX_FILE
        target.parent.mkdir(parents=True)
        quantize_dynamic(found["fp32"] / "1" / ONNX_FILE, target, weight_type=QuantType.QInt8, **options)
        found[name] = target.parent.parent
    tokenizer = repository / fp32.tokenizer
    return {name: onnx_text_encoder(tokenizer, folder) for name, folder in found.items()}


def quality(embed: Callable[[list[str]], np.ndarray], texts: list[str], reference: np.ndarray) -> list[str]:
    got = np.concatenate([embed(texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)])
    similarity = cosine(got, reference)
    alone = np.concatenate([embed([text]) for text in texts[:64]])
    return [
        f"{similarity.min():.4f}",
        f"{np.percentile(similarity, 1):.4f}",
        f"{similarity.mean():.4f}",
        f"{top10_overlap(got, reference, QUERIES):.3f}",
        f"{np.abs(alone - got[:64]).max():.1e}",
    ]


def speed(embed: Callable[[list[str]], np.ndarray], queries: list[str], seconds: float) -> tuple[float, float]:
    """(texts/s at batch 32, p50 ms at batch 1)."""
    batches = [queries[i : i + BATCH] for i in range(0, len(queries), BATCH)]
    per_second, _, _ = time_calls(lambda i: embed(batches[i % len(batches)]), BATCH, seconds)
    _, p50, _ = time_calls(lambda i: embed([queries[i % len(queries)]]), 1, seconds / 2)
    return per_second, p50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer

    texts = corpus(1000)
    reference = SentenceTransformer(str(default_model_path()), device="cpu").encode(texts, batch_size=64)
    queries = payloads.short_texts(512, seed=5)
    with tempfile.TemporaryDirectory() as tmp:
        found = encoders(Path(tmp))
        print("| encoder | min cosine | 1st percentile | mean | top-10 overlap | alone vs batched, max abs |")
        print("|---|---|---|---|---|---|")
        for name, embed in found.items():
            print(f"| {name} | " + " | ".join(quality(embed, texts, reference)) + " |", flush=True)
        rounds = [{name: speed(fn, queries, args.seconds) for name, fn in found.items()} for _ in range(args.rounds)]
    headers = [f"round {r + 1}: batch 32 (vs fp32), batch 1 p50" for r in range(args.rounds)]
    print("\n| encoder | " + " | ".join(headers) + " |")
    print("|---|" + "---|" * args.rounds)
    for name in found:
        cells = [f"{r[name][0]:.0f}/s ({r[name][0] / r['fp32'][0]:.2f}x), {r[name][1]:.2f} ms" for r in rounds]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
