"""The GPU-proxy rows of the side-by-side benchmark: a tiny encoder, so the serving path dominates.

On a GPU the encoder takes about a millisecond per batch; on this CPU all-MiniLM-L6-v2 takes
4-100 ms and hides everything around it. A 2-layer, 32-wide random BERT behind the same
tokenizer (all-MiniLM-L6-v2's files, so the same texts give the same token ids) costs about
as little as a GPU encoder would: what is left to measure is the tokenizer step, the ensemble,
the hops and the protocol, which a GPU would expose just the same (docs/performance.md,
"GPU proxy").

The folder is all-MiniLM-L6-v2's sentence-transformers folder with the transformer's config
and weights replaced (modules.json, pooling and Normalize kept, classic module paths), so
every system loads it as it loads the real model: our exporter, the gateway's tokenizer and
infinity-emb's sentence-transformers 3.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from export.text.default_model import default_model_path

TINY_PIPELINE = "tiny-bert-proxy"
# Two layers, two heads, 32 wide, MiniLM's vocabulary and positions: a few microseconds a row.
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def tiny_model_folder(folder: Path) -> Path:
    """A sentence-transformers folder: MiniLM's tokenizer and modules, a random tiny BERT."""
    import torch
    from transformers import BertConfig, BertModel

    source = default_model_path()
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("model.safetensors", "pytorch_model.bin", "*.onnx"))
    original = json.loads((source / "config.json").read_text())
    config = BertConfig(
        vocab_size=original["vocab_size"],
        max_position_embeddings=original["max_position_embeddings"],
        type_vocab_size=original["type_vocab_size"],
        pad_token_id=original.get("pad_token_id", 0),
        **TINY_BERT,
    )
    torch.manual_seed(0)
    BertModel(config).eval().save_pretrained(folder)
    pooling = folder / "1_Pooling" / "config.json"
    settings = json.loads(pooling.read_text())
    pooling.write_text(json.dumps(settings | {"word_embedding_dimension": TINY_BERT["hidden_size"]}, indent=2))
    return folder


STAGES = ("queue", "compute_input", "compute_infer", "compute_output")


def model_statistics(grpc_url: str, models: list[str]) -> dict[str, dict[str, float]]:
    """Triton's cumulative per-model statistics (gRPC statistics API): ns per stage, counts."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    stats = {}
    for model in models:
        (entry,) = client.get_inference_statistics(model, as_json=True)["model_stats"]
        inference = entry["inference_stats"]
        figures = {stage: float(inference.get(stage, {}).get("ns", 0)) for stage in STAGES}
        figures["requests"] = float(inference.get("success", {}).get("count", 0))
        figures["executions"] = float(entry.get("execution_count", 0))
        stats[model] = figures
    return stats


def process_cpu(server_pid: int) -> dict[str, float]:
    """CPU seconds so far of the Triton process and of each Python-backend stub (by model
    folder), from /proc: where a request's CPU goes, across processes."""
    import os

    tick = os.sysconf("SC_CLK_TCK")

    def stat(pid: int) -> list[str]:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()

    def seconds(fields: list[str]) -> float:
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime

    cpu = {"tritonserver": seconds(stat(server_pid))}
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or int(stat(int(entry.name))[1]) != server_pid:  # children only
                continue
            args = (entry / "cmdline").read_bytes().split(b"\0")
            if args[0].endswith(b"triton_python_backend_stub"):  # then the model.py it runs
                model = Path(args[1].decode()).parent.parent.name
                cpu[model] = cpu.get(model, 0.0) + seconds(stat(int(entry.name)))
        except (OSError, ValueError, IndexError):
            continue
    return cpu


def breakdown(before: dict, after: dict) -> list[tuple[str, float, float, dict[str, float]]]:
    """(model, requests per execution, total us per request, us per request per stage) between two snapshots."""
    rows = []
    for model in after:
        delta = {key: after[model][key] - before[model][key] for key in after[model]}
        requests = max(delta["requests"], 1)
        stages = {stage: delta[stage] / requests / 1000 for stage in STAGES}
        rows.append((model, requests / max(delta["executions"], 1), sum(stages.values()), stages))
    return rows


def profile(levels: list[int], seconds: float, out: Path, baseline: Path | None = None, rounds: int = 1) -> None:
    """perf_analyzer (gRPC) on the tiny ensemble at each concurrency, with Triton's own
    per-step figures between the two snapshots around each run. `baseline`: another
    encoder model.py (e.g. `git show HEAD~1:export/steps/onnx_encoder/model.py`), served as
    a second pipeline on the same server and measured in turn with this one: a step's change
    before and after, side by side."""
    import tempfile

    from benchmarks.common import triton
    from export.text.pipeline import TextExportOptions, export_text
    from export.tools import payloads
    from export.tools.perf_analyzer import write_input_data
    from triton_embeddings.names import TEXT, TextPipelineNames

    pipelines = [TINY_PIPELINE] + ([f"{TINY_PIPELINE}-baseline"] if baseline else [])
    lines = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        repository = work / "model_repository"
        model = tiny_model_folder(work / "tiny_model")
        for pipeline in pipelines:
            export_text(TextExportOptions(str(model), pipeline, repository))
        if baseline:
            shutil.copyfile(baseline, repository / TextPipelineNames(pipelines[1]).encoder / "1" / "model.py")
        input_file = write_input_data(work, TEXT, payloads.short_texts(2000, seed=7))
        with triton(repository, work / "triton.log") as server:
            for level in levels:
                for round_ in range(rounds):
                    for pipeline in pipelines:
                        title = f"{pipeline}, concurrency {level}, round {round_ + 1}"
                        lines += _measured(server, pipeline, input_file, level, seconds, title)
    out.write_text("\n".join(lines))
    print("\n".join(lines))


def _measured(server, pipeline: str, input_file: Path, level: int, seconds: float, title: str) -> list[str]:
    """One perf_analyzer run, its figures, Triton's per-step times and each process's CPU."""
    import time

    from benchmarks.common import perf_row
    from triton_embeddings.names import TextPipelineNames

    names = TextPipelineNames(pipeline)
    models = [names.ensemble, names.tokenizer, names.encoder]
    url, pid = server.options.grpc_url, server.process.pid
    before, cpu_before, began = model_statistics(url, models), process_cpu(pid), time.perf_counter()
    row = perf_row("grpc", pipeline, url, input_file, level, seconds, "grpc", stability_percentage=200)
    wall = time.perf_counter() - began
    after, cpu_after = model_statistics(url, models), process_cpu(pid)
    requests = max(after[names.ensemble]["requests"] - before[names.ensemble]["requests"], 1)
    used = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_after.items() if k in ("tritonserver", *models)}
    per_request = ", ".join(f"{k} {v / requests * 1e6:.0f}" for k, v in used.items())
    busy = sum(used.values()) / wall
    return [
        f"{title}: {row.per_second:.0f}/s, p50 {row.p50_ms:.2f} ms, client CPU {row.client_cpu:.0%} of the machine\n",
        f"CPU us per request: {per_request} (these processes busy {busy:.2f} cores)\n",
        *_stage_table(breakdown(before, after)),
    ]


def _stage_table(rows: list[tuple[str, float, float, dict[str, float]]]) -> list[str]:
    lines = ["| model | requests/execution | us/request | " + " | ".join(STAGES) + " |"]
    lines.append("|---|---|---|" + "---|" * len(STAGES))
    for model, merged, total, stages in rows:
        cells = " | ".join(f"{stages[stage]:.0f}" for stage in STAGES)
        lines.append(f"| {model} | {merged:.2f} | {total:.0f} | {cells} |")
    return [*lines, ""]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Triton's per-step time per request on the GPU-proxy pipeline")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--out", type=Path, default=Path("reports/gpu-proxy-profile.md"))
    parser.add_argument("--baseline", type=Path, help="an encoder model.py to serve beside, measured in turn")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    profile(args.concurrency, args.seconds, args.out, args.baseline, args.rounds)
