"""Model repositories in object storage: each push an immutable release, `CURRENT` names the live one.

Triton reads s3://, gs:// and as:// repositories itself: it downloads a model's folder when it
loads the model (at start, and again on every load or reload through the repository API). A
push that rewrote a live prefix in place would let a server starting, or a watchdog reloading a
crashed step, read half an old model and half a new one. So a push never writes where a server
may read: it uploads the export under `PREFIX/releases/ID/`, writes that release's manifest
last (a release without one is incomplete and never served), and only then moves the pointer
object `PREFIX/CURRENT` to it. `serve --repository s3://.../PREFIX` resolves the pointer once,
at start, and hands Triton the release's own prefix, which never changes: replicas started
before and after a push each see one whole release, and a roll moves them one by one.

The release ID is the upload time and a digest of the files, so pushing the same export again
is a no-op that finds the release already there. Old releases stay until removed by hand: a
running server reloads a crashed step from its release, which must still exist.

Object storage has no folders: an ensemble's version folder is empty, and Triton refuses a
model with no version ("at least one version must be available"), so every empty folder gets
a placeholder object. Only S3 (AWS and S3-compatible stores: MinIO, SeaweedFS, Ceph...) is
written here, with boto3 and its usual credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_DEFAULT_REGION, or a profile); gs:// and as:// are Triton's to read, not ours to push.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.errors import UserError
from export.repository.config import CONFIG_FILE, read_config
from export.repository.layout import model_names

REMOTE_SCHEMES = ("s3://", "gs://", "as://")
RELEASES = "releases"
POINTER = "CURRENT"
MANIFEST = "MANIFEST.json"  # at a release's root; Triton ignores files beside the model folders
PLACEHOLDER = ".keep"  # in a folder that would otherwise not exist in object storage
SKIPPED_FOLDERS = {"__pycache__"}


class StoreError(UserError):
    """An object-storage location that is malformed, unreachable, or holds no repository."""


def is_remote(repository: Path | str) -> bool:
    """Whether Triton reads this repository from object storage rather than a local folder."""
    return str(repository).startswith(REMOTE_SCHEMES)


@dataclass(frozen=True)
class S3Location:
    """An S3 prefix in Triton's own URL form: s3://bucket/prefix on AWS, and for other stores
    s3://host:port/bucket/prefix (plain HTTP) or s3://https://host:port/bucket/prefix."""

    bucket: str
    prefix: str = ""  # no leading or trailing slash
    endpoint: str | None = None  # http(s)://host:port; None: AWS

    @classmethod
    def parse(cls, url: str) -> S3Location:
        if not url.startswith("s3://"):
            raise StoreError(f"{url!r} is not an s3:// URL (pushing to gs:// and as:// is not supported)")
        rest = url.removeprefix("s3://")
        scheme = "http"
        for explicit in ("http://", "https://"):
            if rest.startswith(explicit):
                scheme, rest = explicit.removesuffix("://"), rest.removeprefix(explicit)
        parts = [part for part in rest.split("/") if part]
        endpoint = None
        if parts and ":" in parts[0]:  # Triton's rule: a first part with a port is the store's address
            endpoint = f"{scheme}://{parts.pop(0)}"
        if not parts:
            raise StoreError(f"{url!r} names no bucket: use s3://[host:port/]bucket/prefix")
        return cls(bucket=parts[0], prefix="/".join(parts[1:]), endpoint=endpoint)

    def child(self, *names: str) -> S3Location:
        return S3Location(self.bucket, "/".join(filter(None, (self.prefix, *names))), self.endpoint)

    def key(self, name: str) -> str:
        return "/".join(filter(None, (self.prefix, name)))

    def __str__(self) -> str:
        address = ""
        if self.endpoint is not None:
            scheme, host = self.endpoint.split("://", 1)
            address = f"{'https://' if scheme == 'https' else ''}{host}/"
        return f"s3://{address}{'/'.join(filter(None, (self.bucket, self.prefix)))}"

    def client(self) -> Any:
        import boto3  # only pushing and resolving need it
        from botocore.config import Config

        config = Config(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"})
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=region, config=config)


@dataclass(frozen=True)
class Release:
    """One pushed export: where it is, and whether this push uploaded it or found it there."""

    location: S3Location
    id: str
    files: int
    uploaded: bool

    @property
    def url(self) -> str:
        return str(self.location)


def release_files(repository: Path) -> list[tuple[str, Path | None]]:
    """(key below the release, local file) for every model file, and (key, None) for the
    placeholder of each folder with no file in it. Only model folders are pushed: a README or a
    staging folder beside them is not part of the repository Triton serves."""
    models = model_names(repository)
    if not models:
        raise StoreError(f"{repository} holds no models; export one first (README.md)")
    for model in models:
        _check_portable(repository, model)
    entries: list[tuple[str, Path | None]] = []
    for model in models:
        for folder, subfolders, files in os.walk(repository / model):
            subfolders[:] = sorted(name for name in subfolders if name not in SKIPPED_FOLDERS)
            here = Path(folder)
            relative = here.relative_to(repository).as_posix()
            kept = sorted(name for name in files if not name.endswith(".pyc"))
            entries += [(f"{relative}/{name}", here / name) for name in kept]
            if not kept and not subfolders:
                entries.append((f"{relative}/{PLACEHOLDER}", None))
    return entries


def _check_portable(repository: Path, model: str) -> None:
    """A search collection on the embedded engine with its data beside the repository would
    put its data in the temporary folder Triton downloads the model to: refuse it by name."""
    config = read_config(repository / model)
    params = {key: value.string_value for key, value in config.parameters.items()}
    if params.get("engine") == "embedded" and not Path(params.get("data_dir", "")).is_absolute():
        raise StoreError(
            f"{model}: a collection on the embedded engine keeps its data beside the repository, on one machine; "
            "a repository in object storage needs its collections on Milvus (export search --engine milvus --uri ...)"
        )


def digest(entries: list[tuple[str, Path | None]]) -> str:
    """What the release holds, in 16 hex digits: the same export gives the same digest."""
    whole = hashlib.sha256()
    for key, path in entries:
        whole.update(key.encode() + b"\0")
        if path is not None:
            with path.open("rb") as file:
                for block in iter(lambda: file.read(1 << 20), b""):
                    whole.update(block)
        whole.update(b"\0")
    return whole.hexdigest()[:16]


def push(repository: Path, url: str, *, point: bool = True, say=print) -> Release:
    """Upload `repository` as a new release under `url` and, with `point`, make it CURRENT."""
    base = S3Location.parse(url)
    entries = release_files(repository)
    content = digest(entries)
    s3 = base.client()
    _check_bucket(s3, base)
    existing = _find_release(s3, base, content)
    if existing is not None:
        release = Release(base.child(RELEASES, existing), existing, len(entries), uploaded=False)
        say(f"{release.url}: already there (same files)")
    else:
        release_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{content}"
        release = Release(base.child(RELEASES, release_id), release_id, len(entries), uploaded=True)
        _upload(s3, release.location, entries, say)
        manifest = {"id": release_id, "files": [key for key, _ in entries], "source": str(repository.resolve())}
        s3.put_object(Bucket=base.bucket, Key=release.location.key(MANIFEST), Body=json.dumps(manifest, indent=1))
    if point:
        s3.put_object(Bucket=base.bucket, Key=base.key(POINTER), Body=release.id.encode())
        say(f"{base.child(POINTER)} -> {release.id}")
    return release


def _check_bucket(s3: Any, base: S3Location) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        s3.head_bucket(Bucket=base.bucket)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchBucket"):
            where = base.endpoint or "AWS"
            raise StoreError(f"bucket {base.bucket!r} does not exist at {where}; create it first") from None
        raise StoreError(f"cannot use bucket {base.bucket!r}: {error}") from None
    except BotoCoreError as error:
        raise StoreError(f"cannot reach {base.endpoint or 'AWS S3'}: {error}") from None


def _find_release(s3: Any, base: S3Location, content: str) -> str | None:
    """A complete release (its manifest written) holding exactly these files."""
    for release_id in releases(s3, base):
        if release_id.endswith(f"-{content}"):
            return release_id
    return None


def releases(s3: Any, base: S3Location) -> list[str]:
    """The complete releases under `base`, oldest first (IDs start with their UTC time)."""
    found = []
    for prefix in _subfolders(s3, base.child(RELEASES)):
        release_id = prefix.rstrip("/").rsplit("/", 1)[-1]
        if _exists(s3, base.bucket, base.child(RELEASES, release_id).key(MANIFEST)):
            found.append(release_id)
    return sorted(found)


def _upload(s3: Any, location: S3Location, entries: list[tuple[str, Path | None]], say) -> None:
    from boto3.s3.transfer import TransferConfig

    transfer = TransferConfig(max_concurrency=4)
    total = sum(path.stat().st_size for _, path in entries if path is not None)
    say(f"uploading {len(entries)} files ({total / 1e6:.1f} MB) to {location}")

    def upload(entry: tuple[str, Path | None]) -> None:
        key, path = entry
        if path is None:
            s3.put_object(Bucket=location.bucket, Key=location.key(key), Body=b"")
        else:
            s3.upload_file(str(path), location.bucket, location.key(key), Config=transfer)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(upload, entries))


def _subfolders(s3: Any, location: S3Location) -> Iterator[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=location.bucket, Prefix=location.key("") + "/" if location.prefix else "", Delimiter="/"
    )
    for page in pages:
        for entry in page.get("CommonPrefixes", []):
            yield entry["Prefix"]


def _exists(s3: Any, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def resolve(url: str) -> str:
    """The repository Triton should read for `url`: the release CURRENT names under an s3://
    prefix that has one, else `url` itself (a release's own URL, a repository uploaded by other
    means, or gs:// and as://, which Triton reads as they are)."""
    if not url.startswith("s3://"):
        return url
    base = S3Location.parse(url)
    s3 = base.client()
    _check_bucket(s3, base)
    try:
        pointer = s3.get_object(Bucket=base.bucket, Key=base.key(POINTER))["Body"].read().decode().strip()
    except s3.exceptions.NoSuchKey:
        return str(base)
    release = base.child(RELEASES, pointer)
    if not _exists(s3, base.bucket, release.key(MANIFEST)):
        raise StoreError(f"{base.child(POINTER)} names release {pointer!r}, which is missing or incomplete")
    return str(release)


def current(repository: Path | str) -> Path | str:
    """What a server started now reads for `repository`: a folder as it is, an s3:// prefix's
    CURRENT release (resolve)."""
    return resolve(str(repository)) if is_remote(repository) else repository


def remote_models(url: str) -> list[str]:
    """The models of an s3:// repository (folders holding a config.pbtxt), as model_names does."""
    location = S3Location.parse(url)
    s3 = location.client()
    names = [prefix.rstrip("/").rsplit("/", 1)[-1] for prefix in _subfolders(s3, location)]
    return sorted(name for name in names if _exists(s3, location.bucket, location.child(name).key(CONFIG_FILE)))
