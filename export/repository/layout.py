"""The Triton model repository on disk: model folders, their version folder, and safe writes.

A pipeline is written into a staging folder next to the repository and then moved in model by
model, so a server that (re)loads the repository never reads a half-written model.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from export.errors import InvalidArgumentError
from export.repository.config import CONFIG_FILE

DEFAULT_REPOSITORY = Path("model_repository")
VERSION = "1"

# Model names become folder names and URL path segments: keep them boring.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_pipeline_name(name: str) -> str:
    """Refuse names that are not a plain folder name (no separators, no `..`, no hidden files)."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise InvalidArgumentError(
            f"invalid pipeline name {name!r}: use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit (it becomes a folder and a URL segment)"
        )
    return name


def version_dir(model_dir: Path) -> Path:
    path = model_dir / VERSION
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_names(repository: Path) -> list[str]:
    """Models in the repository: folders holding a config.pbtxt."""
    if not repository.is_dir():
        return []
    return sorted(p.name for p in repository.iterdir() if (p / CONFIG_FILE).is_file())


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step (Linux renameat2). False where this system cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(second))


@contextmanager
def staged_models(repository: Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success, move each model folder in it into place.

    The staging folder sits beside the repository (same file system, so moves are renames)
    rather than inside it, where Triton would try to load it as a model. A model that already
    exists is exchanged with the new one in a single rename: a server reading the repository
    sees the old model or the new one, complete, never a missing or half-written one. (Where
    the file system cannot exchange, the old folder is renamed away first.)
    """
    repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{repository.name}-staging-", dir=repository.parent))
    try:
        yield staging
        for model_dir in sorted(staging.iterdir()):
            target = repository / model_dir.name
            if not target.exists():
                model_dir.rename(target)
            elif not exchange(model_dir, target):  # the old model stays behind in staging
                target.rename(staging / f".replaced-{model_dir.name}")
                model_dir.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
