"""`search` (export a collection over a pipeline) and `ingest` (fill one through the server)."""

from __future__ import annotations

import argparse

from export.cli import flags


def add_commands(commands: argparse._SubParsersAction) -> None:
    from triton_embeddings.names import DEFAULT_MAX_TOP_K, DEFAULT_TOP_K

    search = commands.add_parser(
        "search",
        help="export a search collection over a text or CLIP pipeline of the repository",
        description="Writes COLLECTION_index (the collection on its engine) and the ensembles clients call: "
        "COLLECTION_search and COLLECTION_upsert over a text pipeline; COLLECTION_image_search, "
        "COLLECTION_text_search and COLLECTION_image_upsert over a CLIP pipeline. docs/search.md.",
    )
    search.add_argument("collection", metavar="COLLECTION", help="the collection's name (a prefix of its models)")
    search.add_argument("--pipeline", required=True, help="the text or CLIP pipeline that embeds, as `list` shows it")
    flags.add_repository(search)
    search.add_argument(
        "--engine",
        choices=["embedded", "milvus"],
        default="embedded",
        help="embedded: in the index step, data in a folder (default); milvus: a Milvus server (--uri)",
    )
    search.add_argument(
        "--data",
        metavar="DIR",
        help="embedded: the collection's folder; a relative one starts at the folder holding the repository "
        "(default: collections/COLLECTION beside the repository; give an absolute one for a repository in "
        "object storage)",
    )
    search.add_argument("--uri", help="milvus: the server, e.g. http://localhost:19530")
    search.add_argument(
        "--milvus-collection", metavar="NAME", help="milvus: the collection's name on the server (default: COLLECTION)"
    )
    search.add_argument(
        "--metric",
        choices=["cosine", "ip", "l2"],
        default="cosine",
        help="how closeness is measured; scores are higher-is-closer for all three (l2: minus the distance) "
        "(default: cosine)",
    )
    search.add_argument(
        "--top-k", type=int, default=DEFAULT_TOP_K, metavar="K", help=f"hits per query (default: {DEFAULT_TOP_K})"
    )
    search.add_argument(
        "--max-top-k",
        type=int,
        default=DEFAULT_MAX_TOP_K,
        metavar="K",
        help=f"the most hits a request may ask for (default: {DEFAULT_MAX_TOP_K})",
    )
    search.set_defaults(run=_run_search)


def _run_search(args: argparse.Namespace) -> int:
    from export.search.collection import CollectionOptions, export_collection

    record = export_collection(
        CollectionOptions(
            name=args.collection,
            pipeline=args.pipeline,
            repository=args.repository,
            engine=args.engine,
            metric=args.metric,
            top_k=args.top_k,
            max_top_k=args.max_top_k,
            data=args.data,
            uri=args.uri,
            milvus_collection=args.milvus_collection,
        )
    )
    print(
        f"wrote {', '.join(record.models)} to {args.repository}: {record.embedding_size}-d {args.metric} collection "
        f"on the {args.engine} engine, embedded by {record.uses}"
    )
    return 0
