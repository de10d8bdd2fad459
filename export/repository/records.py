"""Pipelines in a repository: what each export wrote, listed, replaced and removed as a unit.

Every model clients call carries a `pipeline` parameter (JSON): each ensemble an exporter
writes, or a one-step pipeline's one model (no ensemble in front). The record holds the
export's name, kind, runtime, precision, embedding size and every model folder it wrote. That
record is how `list` finds pipelines, how `remove` knows exactly what to delete (and nothing
else), and how a new export of the same name drops models the old one had and the new one
has not.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from export.errors import InvalidArgumentError
from export.repository.config import read_config
from export.repository.layout import check_pipeline_name, model_names, staged_models

RECORD_PARAMETER = "pipeline"


@dataclass(frozen=True)
class PipelineRecord:
    name: str
    kind: str  # "text" or "clip"; "search" for a collection
    runtime: str
    precision: str
    embedding_size: int
    ensembles: tuple[str, ...]  # what clients call: ensembles, or a one-step pipeline's model
    steps: tuple[str, ...]  # what the ensembles call (none for a one-step pipeline)
    uses: str = ""  # a search collection: the pipeline whose steps its ensembles call

    @property
    def models(self) -> tuple[str, ...]:
        return self.ensembles + self.steps

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PipelineRecord:
        values = json.loads(text)
        return cls(**values | {key: tuple(values[key]) for key in ("ensembles", "steps")})

    def parameters(self) -> dict[str, str]:
        """What the config of a model clients call carries, to be found again."""
        return {RECORD_PARAMETER: self.to_json()}


def pipelines(repository: Path) -> dict[str, PipelineRecord]:
    """The pipelines in `repository`, by name, read from the configs of the models clients call."""
    found: dict[str, PipelineRecord] = {}
    for model in model_names(repository):
        config = read_config(repository / model)
        if RECORD_PARAMETER in config.parameters:
            record = PipelineRecord.from_json(config.parameters[RECORD_PARAMETER].string_value)
            found.setdefault(record.name, record)
    return dict(sorted(found.items()))


def _model_dir(repository: Path, model: str) -> Path:
    """A model folder of the repository, refusing anything that resolves elsewhere."""
    path = (repository / check_pipeline_name(model)).resolve()
    if path.parent != repository.resolve():
        raise InvalidArgumentError(f"{model!r} is not a folder of {repository}")
    return path


def remove_pipeline(repository: Path, name: str) -> PipelineRecord:
    """Delete every model of pipeline `name`, and nothing else."""
    check_pipeline_name(name)
    known = pipelines(repository)
    if name not in known:
        listed = ", ".join(known) or "none"
        raise InvalidArgumentError(f"{name!r} is not a pipeline in {repository} (pipelines: {listed})")
    record = known[name]
    if users := [r.name for r in known.values() if r.uses == name]:
        raise InvalidArgumentError(f"{name!r} is used by the collections {', '.join(users)}: remove them first")
    _delete(repository, record.models)
    return record


def _delete(repository: Path, models: tuple[str, ...] | list[str]) -> None:
    """Move the folders out of the repository in one rename each, then delete them: a server
    reading the repository sees a model or no model, never a half-deleted one."""
    trash = Path(tempfile.mkdtemp(prefix=f".{repository.name}-removed-", dir=repository.parent))
    try:
        for model in models:
            path = _model_dir(repository, model)
            if path.is_dir():
                path.rename(trash / model)
    finally:
        shutil.rmtree(trash, ignore_errors=True)


@contextmanager
def staged_pipeline(repository: Path, record: PipelineRecord) -> Iterator[Path]:
    """staged_models for one export: afterwards, models an earlier export of the same name
    wrote and this one did not (a classifier dropped with the labels) are removed too."""
    previous = pipelines(repository).get(record.name) if repository.is_dir() else None
    with staged_models(repository) as staging:
        yield staging
    if previous is not None:
        _delete(repository, [model for model in previous.models if model not in record.models])
