"""Output files that are whole or absent: a killed stage never leaves a complete-looking output,
and a stage that runs out of space ends with one line naming the output it could not write."""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

# A write refused for want of space: a full disk, a full quota, or a file size limit (`ulimit -f`,
# which fails the write with EFBIG where a full disk gives ENOSPC).
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# torch.save's and accelerate's file writer (PyTorchStreamWriter) reports a failed write as a
# RuntimeError of its own, without the errno: "[enforce fail at inline_container.cc:...] ...".
TORCH_WRITER = "inline_container.cc"


class OutputError(Exception):
    """An output could not be written (no space, or a file size limit); the message names it."""


def no_space_reason(err: BaseException) -> str | None:
    """Why `err` (or an exception it was raised from) is a write refused for want of space, in
    the system's words ("No space left on device", "File too large"), or None when it is not.
    The libraries say it their own ways: OSError's errno (Python, pandas, pyarrow), "os error 27"
    in a SafetensorError's text (safetensors), torch's stream-writer failure."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            return os.strerror(err.errno)
        text = str(err)
        for code in NO_SPACE:
            if f"os error {code})" in text or os.strerror(code) in text:
                return os.strerror(code)
        if TORCH_WRITER in text:
            return "the write failed (torch's file writer)"
        err = err.__cause__ or err.__context__
    return None


@contextmanager
def writing(path: str | Path):
    """Turn a write refused for want of space, raised inside, into OutputError naming `path`;
    other errors pass through unchanged."""
    try:
        yield
    except OutputError:
        raise
    except Exception as err:
        reason = no_space_reason(err)
        if reason is None:
            raise
        raise OutputError(f"could not write {path}: {reason} (the disk is full, or a file size limit was "
                          f"reached); nothing was left there: free some space and run the stage again") from err


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; on success it is renamed to `path` (a file or a
    folder, replacing what was there), so a crash never leaves a complete-looking output. A write
    refused for want of space ends in OutputError naming `path`, and leaves neither `path` nor
    the temporary one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    for stale in [*path.parent.glob(f".{path.name}.tmp-*"), *path.parent.glob(f".{path.name}.old-*")]:
        remove(stale)  # left by a killed run
    try:
        with writing(path):
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
