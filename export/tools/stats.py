"""Per-step statistics of a served pipeline, from Triton's statistics API.

For each model of the pipeline (its ensembles, then each step): requests, executions, the
average batch an execution ran, average queue and compute time per request, failures. The
numbers an operator reads first when a pipeline is slow: a step whose queue time grows is
the bottleneck; a batch size near 1 under load means requests are not being merged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from export.errors import UserError
from export.repository.records import RECORD_PARAMETER, PipelineRecord


@dataclass(frozen=True)
class StepStats:
    model: str
    requests: int
    executions: int
    failures: int
    queue_ms: float  # average per request
    compute_ms: float  # average per request: input, inference and output

    @property
    def batch_size(self) -> float:
        """Requests per execution: how well the dynamic batcher merged."""
        return self.requests / self.executions if self.executions else 0.0


def _milliseconds(duration: dict) -> float:
    count = int(duration.get("count", 0))
    return int(duration.get("ns", 0)) / count / 1e6 if count else 0.0


def find_pipeline(client: grpcclient.InferenceServerClient, name: str) -> PipelineRecord:
    """The pipeline named `name`, or the one an ensemble named `name` belongs to."""
    for entry in client.get_model_repository_index(as_json=True).get("models", []):
        if entry.get("state") != "READY":
            continue
        config = client.get_model_config(entry["name"], as_json=True)["config"]
        record = config.get("parameters", {}).get(RECORD_PARAMETER, {}).get("string_value")
        if record:
            found = PipelineRecord.from_json(record)
            if name in (found.name, *found.ensembles):
                return found
    raise UserError(f"no loaded pipeline or ensemble named {name!r} on this server")


def pipeline_stats(url: str, name: str, record: PipelineRecord | None = None) -> tuple[PipelineRecord, list[StepStats]]:
    """`record`: the pipeline as its repository describes it; None asks the server for it."""
    client = grpcclient.InferenceServerClient(url)
    try:
        client.is_server_live()  # an unreachable server is an error, not a table of nothing
        record = record or find_pipeline(client, name)
        rows = []
        for model in record.models:
            try:
                (stats,) = client.get_inference_statistics(model, as_json=True)["model_stats"]
            except (InferenceServerException, ValueError):
                continue  # not loaded (explicit model control): nothing to report
            inference = stats.get("inference_stats", {})
            phases = ("compute_input", "compute_infer", "compute_output")
            compute = sum(_milliseconds(inference.get(phase, {})) for phase in phases)
            rows.append(
                StepStats(
                    model=model,
                    requests=int(stats.get("inference_count", 0)),
                    executions=int(stats.get("execution_count", 0)),
                    failures=int(inference.get("fail", {}).get("count", 0)),
                    queue_ms=_milliseconds(inference.get("queue", {})),
                    compute_ms=compute,
                )
            )
        return record, rows
    except InferenceServerException as error:
        raise UserError(f"server at {url}: {error.message()}") from None
    finally:
        client.close()


def table(rows: list[StepStats]) -> str:
    lines = [
        "| model | requests | executions | avg batch | avg queue ms | avg compute ms | failures |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.requests} | {r.executions} | {r.batch_size:.1f} | {r.queue_ms:.2f} "
            f"| {r.compute_ms:.2f} | {r.failures} |"
        )
    return "\n".join(lines)


def as_json(record: PipelineRecord, rows: list[StepStats]) -> str:
    return json.dumps({"pipeline": record.name, "steps": [r.__dict__ | {"batch_size": r.batch_size} for r in rows]})
