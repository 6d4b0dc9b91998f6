"""Atomic file writes: a reader sees the old file or the whole new one, never a half-written one.

The one way this project writes a file that must survive a crash (config.yaml, meta.json
sidecars, markers, checkpoint COMPLETE/latest, token-label parts): write to a temporary name
in the same directory, flush and fsync it, rename it over the target (`os.replace`, atomic on
POSIX), then fsync the directory so the rename itself is durable. On any failure, a full
disk (ENOSPC) included, the temporary file is removed: a full disk must not collect them.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some file systems do not open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path next to `path` for the caller to write (a tool that takes a
    file name: np.savez, ffcv's writer, a copy loop); on a clean exit it is fsynced and renamed
    to `path`, on an exception removed. `suffix` keeps an extension a writer insists on."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write `data` (text as UTF-8, or bytes) to `path` atomically and durably."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int | None = 1) -> None:
    atomic_write(path, json.dumps(data, indent=indent) + "\n")
