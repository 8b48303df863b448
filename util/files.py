"""Atomic file writes: readers (and a crash) never see half a file.

The data go to a temporary file beside the target, are flushed and fsynced, and the file is renamed over the
target with ``os.replace`` (atomic on POSIX); the folder is fsynced so the rename itself survives a crash.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: str | Path, data: str | bytes | Callable[[BinaryIO], None]) -> None:
    """Write ``data`` to ``path`` atomically.

    Args:
        path: the target; its folder is created when missing.
        data: text (written as UTF-8, newlines unchanged), bytes, or a function that writes into the open binary
            file (e.g. ``lambda f: torch.save(obj, f)``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
