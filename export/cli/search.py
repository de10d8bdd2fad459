"""`search` (export a collection over a pipeline) and `ingest` (fill one through the server)."""

from __future__ import annotations

import argparse
from pathlib import Path

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

    ingest = commands.add_parser(
        "ingest",
        help="store a folder of images or a JSONL of texts in a served collection",
        description="Sends each item through the collection's upsert ensemble on a running server. Resumable: "
        "ids already stored are skipped. Bad items are listed at the end; the rest is stored. "
        'JSONL: one object a line, {"text": ..., "id": optional integer, other fields: the payload}. '
        'Images: every file under DIR, payload {"path": its path under DIR}. Exit status 1 when an item was bad.',
    )
    ingest.add_argument("collection", metavar="COLLECTION", help="the collection, as `export search` named it")
    source = ingest.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, metavar="DIR", help="a folder of images (a CLIP collection)")
    source.add_argument("--jsonl", type=Path, metavar="FILE", help="a JSON-lines file of texts")
    flags.add_server(ingest)
    ingest.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="per request (default: 60)")
    ingest.add_argument("--batch", type=int, default=32, metavar="N", help="items a request (default: 32)")
    ingest.add_argument("--concurrency", type=int, default=4, metavar="N", help="requests in flight (default: 4)")
    flags.add_switch(ingest, "--resume", "skip the ids already stored", default=True)
    flags.add_switch(ingest, "--progress", "a progress bar on stderr", default=True)
    ingest.set_defaults(run=_run_ingest, resolve=flags.resolve_url)


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


def _run_ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from export.errors import InvalidArgumentError
    from export.search.ingest import check_collection, image_items, ingest, jsonl_items
    from triton_embeddings import EmbeddingClient

    if args.batch < 1 or args.concurrency < 1:
        raise InvalidArgumentError("--batch and --concurrency must be at least 1")
    items = image_items(args.images) if args.images else jsonl_items(args.jsonl)
    with EmbeddingClient(args.url, args.protocol, timeout=args.timeout) as client:
        check_collection(client, args.collection)
        with tqdm(unit=" items", disable=not args.progress) as bar:
            report = ingest(
                client,
                args.collection,
                items,
                batch=args.batch,
                concurrency=args.concurrency,
                resume=args.resume,
                progress=bar.update,
            )
    print(report.summary())
    return 1 if report.bad else 0
