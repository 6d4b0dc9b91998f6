"""Cheap start-up checks of a beton against its meta sidecar.

`check_beton(path, key)` is what a run (and the SLURM pre-flight) calls before the first
step: the file exists, is not empty, opens as an FFCV beton, and its fingerprint (size,
header, tables, sampled payloads: meta.py) equals the one the converter recorded. It
raises DataError with one line naming the file and the fix, and returns the meta.
"""

from __future__ import annotations

import os
from typing import Any

from .errors import DataError
from .meta import beton_fingerprint, meta_path, read_meta


def check_beton(path: str | os.PathLike | None, key: str) -> dict[str, Any]:
    if not path:
        raise DataError(f"{key} is not set (path to a .beton made by python -m rmt_dist.data.convert)")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{key}: {path} does not exist (convert it with python -m rmt_dist.data.convert)")
    if os.path.getsize(path) == 0:
        raise DataError(f"{key}: {path} is empty (0 bytes); re-run python -m rmt_dist.data.convert for it")
    if not meta_path(path).is_file():
        raise DataError(f"{key}: {meta_path(path)} is missing; re-run python -m rmt_dist.data.convert for {path}")
    meta = read_meta(path)
    want = meta.get("fingerprint")
    got = beton_fingerprint(path)
    if want is not None and got != want:
        raise DataError(f"{key}: {path} does not match its meta file (fingerprint {got[:19]} vs {want[:19]}): "
                        "the beton was changed or damaged after conversion; re-convert it")
    return meta
