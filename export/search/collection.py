"""Export a search collection over a pipeline already in the repository.

Names from `names.CollectionNames`:
- `<collection>_index`: Python backend, the collection on its engine (export/steps/index);
- over a text pipeline, `<collection>_search` (TEXT -> IDS, SCORES, PAYLOADS) and
  `<collection>_upsert` (TEXT, ID, PAYLOAD -> COUNT);
- over a CLIP pipeline, `<collection>_image_search` (IMAGE -> hits), `<collection>_text_search`
  (TEXT -> images' hits) and `<collection>_image_upsert` (IMAGE, ID, PAYLOAD -> COUNT).

Each ensemble is the pipeline's own ensemble (its steps, read from its config) with the index
step after the encoder: one request to Triton embeds and searches, with no gateway. Nothing of
the pipeline is copied or changed; re-exporting the pipeline with the same embedding size keeps
the collection working. The embedded engine's data lives outside every model folder, so
re-exporting the collection keeps its points.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from export.errors import InvalidArgumentError
from export.exporter import write_ensemble
from export.repository import config as model_config
from export.repository.config import EnsembleStep
from export.repository.layout import DEFAULT_REPOSITORY, check_pipeline_name
from export.repository.records import PipelineRecord, pipelines, staged_pipeline
from export.steps.index.actions import ENGINES, IndexSettings
from export.steps.writers import write_index
from triton_embeddings.names import (
    COUNT,
    DEFAULT_MAX_TOP_K,
    DEFAULT_TOP_K,
    EMBEDDING,
    FILTER,
    ID,
    IDS,
    IMAGE,
    PAYLOAD,
    PAYLOADS,
    SCORES,
    TEXT,
    TOP_K,
    ClipPipelineNames,
    CollectionNames,
    TensorSpec,
)

SEARCH_KIND = "search"  # the kind of a collection's record; pipelines are "text" or "clip"
COLLECTIONS_FOLDER = "collections"  # embedded data, beside the repository: collections/NAME


@dataclass(frozen=True)
class CollectionOptions:
    """What `python -m export search` was asked for."""

    name: str
    pipeline: str
    repository: Path = DEFAULT_REPOSITORY
    engine: str = "embedded"
    metric: str = "cosine"
    top_k: int = DEFAULT_TOP_K
    max_top_k: int = DEFAULT_MAX_TOP_K
    # embedded: the data folder (default collections/NAME beside the repository); relative
    # paths start at the folder holding the repository.
    data: str | None = None
    # milvus: the server, and the collection's name there (default: NAME).
    uri: str | None = None
    milvus_collection: str | None = None


def export_collection(options: CollectionOptions) -> PipelineRecord:
    names = CollectionNames(check_pipeline_name(options.name))
    source = _source_pipeline(options)
    settings = _settings(options, source.embedding_size)
    record = PipelineRecord(
        name=names.name,
        kind=SEARCH_KIND,
        runtime="python",
        precision=source.precision,
        embedding_size=source.embedding_size,
        ensembles=names.ensembles(source.kind),
        steps=(names.index,),
        uses=source.name,
    )
    with staged_pipeline(options.repository, record) as staging:
        max_batch_size = _max_batch_size(options.repository, source)
        write_index(staging / names.index, names.index, settings, max_batch_size)
        for ensemble, (embedding, upsert) in _ensembles(names, source).items():
            _write_collection_ensemble(staging / ensemble, options.repository / embedding, names, record, upsert)
    return record


def _source_pipeline(options: CollectionOptions) -> PipelineRecord:
    known = pipelines(options.repository)
    if options.pipeline not in known or known[options.pipeline].kind == SEARCH_KIND:
        listed = ", ".join(n for n, r in known.items() if r.kind != SEARCH_KIND) or "none"
        raise InvalidArgumentError(
            f"{options.pipeline!r} is not a text or CLIP pipeline in {options.repository} (pipelines: {listed})"
        )
    taken = known.get(options.name)
    if taken is not None and taken.kind != SEARCH_KIND:
        raise InvalidArgumentError(f"{options.name!r} is a {taken.kind} pipeline's name; pick another collection name")
    return known[options.pipeline]


def _settings(options: CollectionOptions, dimension: int) -> IndexSettings:
    if options.engine not in ENGINES:
        raise InvalidArgumentError(f"unknown engine {options.engine!r}; use one of {', '.join(ENGINES)}")
    if options.engine == "milvus" and not options.uri:
        raise InvalidArgumentError("--engine milvus needs --uri, the server's address (e.g. http://localhost:19530)")
    if options.engine == "embedded" and (options.uri or options.milvus_collection):
        raise InvalidArgumentError("--uri and --milvus-collection are for --engine milvus")
    try:
        return IndexSettings(
            engine=options.engine,
            dimension=dimension,
            metric=options.metric,
            top_k=options.top_k,
            max_top_k=options.max_top_k,
            data_dir=(options.data or f"{COLLECTIONS_FOLDER}/{options.name}") if options.engine == "embedded" else "",
            uri=options.uri or "",
            collection=(options.milvus_collection or options.name.replace("-", "_").replace(".", "_"))
            if options.engine == "milvus"
            else "",
        )
    except ValueError as error:
        raise InvalidArgumentError(str(error)) from None


def _ensembles(names: CollectionNames, source: PipelineRecord) -> dict[str, tuple[str, bool]]:
    """Each ensemble of the collection: the pipeline ensemble it extends, and whether it stores."""
    if source.kind == "text":
        return {names.search: (source.name, False), names.upsert: (source.name, True)}
    clip = ClipPipelineNames(source.name)
    return {
        names.image_search: (clip.image, False),
        names.text_search: (clip.text, False),
        names.image_upsert: (clip.image, True),
    }


def _max_batch_size(repository: Path, source: PipelineRecord) -> int:
    """The index step takes what the pipeline's ensembles send at most."""
    return max(model_config.read_config(repository / name).max_batch_size for name in source.ensembles)


def _write_collection_ensemble(
    model_dir: Path, embedding_dir: Path, names: CollectionNames, record: PipelineRecord, upsert: bool
) -> None:
    """The embedding ensemble's steps, then the index step: search (item, TOP_K, FILTER -> IDS,
    SCORES, PAYLOADS) or upsert (item, ID, PAYLOAD -> COUNT)."""
    embedding = model_config.read_config(embedding_dir)
    if [output.name for output in embedding.output] != [EMBEDDING.name]:
        raise InvalidArgumentError(
            f"{embedding.name} does not output {EMBEDDING.name} alone: not an embedding pipeline"
        )
    item = {TEXT.name: TEXT, IMAGE.name: IMAGE}[embedding.input[0].name]
    extra: list[TensorSpec] = [ID, PAYLOAD] if upsert else [TOP_K, FILTER]
    outputs = [COUNT] if upsert else [IDS, SCORES, PAYLOADS]
    index = EnsembleStep.chain(names.index, [EMBEDDING, *extra], outputs)
    write_ensemble(
        model_dir,
        [item, *extra],
        outputs,
        [*model_config.ensemble_steps(embedding), index],
        embedding.max_batch_size,
        record.parameters(),
        response_cache=False,  # answers change with every write
        optional=[PAYLOAD.name] if upsert else [TOP_K.name, FILTER.name],
    )
