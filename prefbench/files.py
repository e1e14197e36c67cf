"""Output files that are whole or absent: a killed stage never leaves a complete-looking output."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; on success it is renamed to `path` (a file or a
    folder, replacing what was there), so a crash never leaves a complete-looking output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    for stale in [*path.parent.glob(f".{path.name}.tmp-*"), *path.parent.glob(f".{path.name}.old-*")]:
        remove(stale)  # left by a killed run
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            os.replace(path, old)  # a folder cannot be renamed over a non-empty one
        os.replace(tmp, path)
    finally:
        remove(tmp)
        remove(old)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
