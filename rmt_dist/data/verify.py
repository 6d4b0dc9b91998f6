"""Checks of a beton against its meta sidecar: cheap ones at every start, a full one on demand.

    python -m rmt_dist.data.verify BETON [BETON ...]

`check_beton(path, key)` is what a run (and the SLURM pre-flight) calls before the first
step: the file exists, is not empty, opens as an FFCV beton, and its fingerprint (size,
header, tables, sampled payloads: meta.py) equals the one the converter recorded. It
raises DataError with one line naming the file and the fix, and returns the meta.
`check_classes` refuses a beton whose class count differs from the model's (or whose
class map differs from the train split's) before any step is spent on it.

The command adds a full checksum (crc32 of every byte, `full_checksum`, recorded by the
converter as meta "checksum"): damage the sampled fingerprint misses, e.g. bytes
overwritten in the middle of a large beton, shows there. Exit 0 intact, 2 damaged or
bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
import zlib
from typing import Any

from ..errors import EXIT_BAD_INPUT
from .errors import DataError
from .meta import beton_fingerprint, meta_path, read_meta

_CHUNK = 16 << 20


def check_beton(path: str | os.PathLike | None, key: str) -> dict[str, Any]:
    if not path:
        raise DataError(f"{key} is not set (path to a .beton made by python -m rmt_dist.data.convert)")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{key}: {path} does not exist (convert it with python -m rmt_dist.data.convert)")
    if os.path.getsize(path) == 0:
        raise DataError(f"{key}: {path} is empty (0 bytes); re-run python -m rmt_dist.data.convert for it")
    if not meta_path(path).is_file():
        raise DataError(
            f"{key}: {meta_path(path)} is missing; re-run python -m rmt_dist.data.convert for {path}"
        )
    try:
        meta = read_meta(path)
    except ValueError as e:  # DataError is a ValueError too: keep its message
        if isinstance(e, DataError):
            raise
        raise DataError(
            f"{key}: {meta_path(path)} is not valid JSON ({e}); re-run python -m rmt_dist.data.convert "
            f"for {path}"
        ) from None
    want = meta.get("fingerprint")
    try:
        got = beton_fingerprint(path)
    except DataError as e:
        raise DataError(f"{key}: {e}; the beton is truncated or damaged: re-convert it") from None
    if want is not None and got != want:
        raise DataError(
            f"{key}: {path} does not match its meta file (fingerprint {got[:19]} vs {want[:19]}): "
            "the beton was changed or damaged after conversion; re-convert it"
        )
    return meta


def check_classes(
    meta: dict[str, Any], key: str, path: str, num_classes: int, train_meta: dict[str, Any] | None = None
) -> None:
    """Refuse a beton whose labels do not fit the model (or differ from the train split's)."""
    n = meta.get("num_classes")
    if n is not None and n != num_classes:
        raise DataError(
            f"{key}: {path} has {n} classes but model.num_classes={num_classes}: set "
            f"model.num_classes={n}, or use a beton of the model's classes (convert a val split with "
            "--classes TRAIN.beton.meta.json)"
        )
    if (
        train_meta is not None
        and meta.get("classes")
        and train_meta.get("classes")
        and meta["classes"] != train_meta["classes"]
    ):
        raise DataError(
            f"{key}: {path} maps its class names to other labels than data.train's beton: re-convert it "
            "with --classes TRAIN.beton.meta.json"
        )


def full_checksum(path: str | os.PathLike, progress: bool = False) -> str:
    """'crc32:<hex>' of every byte of the file (about 1-2 GB/s: ImageNet's beton in minutes)."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=size, unit="B", unit_scale=True, desc=f"checksum {os.path.basename(path)}", leave=False
        )
    crc = 0
    try:
        with open(path, "rb") as f:
            while block := f.read(_CHUNK):
                crc = zlib.crc32(block, crc)
                if bar is not None:
                    bar.update(len(block))
    finally:
        if bar is not None:
            bar.close()
    return f"crc32:{crc:08x}"


def verify_beton(path: str | os.PathLike, progress: bool = True) -> str:
    """The cheap checks and the full checksum; one line describing the result, or DataError."""
    path = os.fspath(path)
    try:
        meta = check_beton(path, "BETON")
    except DataError as e:  # name the file once: "BETON: PATH ..." -> "PATH ..."
        raise DataError(str(e).removeprefix("BETON: ")) from None
    want = meta.get("checksum")
    got = full_checksum(path, progress=progress)
    if want is None:
        return (
            f"{path}: fingerprint ok, {meta.get('num_samples', '?')} samples; no full checksum recorded "
            f"(converted before checksums were): its checksum is {got}"
        )
    if got != want:
        raise DataError(
            f"{path}: full checksum {got} differs from the meta file's {want}: the beton was damaged "
            "after conversion; re-convert it"
        )
    return f"{path}: ok ({meta.get('num_samples', '?')} samples, {got})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m rmt_dist.data.verify",
        description="Check betons against their meta files: fingerprint and full checksum.",
    )
    p.add_argument(
        "betons", nargs="+", metavar="BETON", help="a .beton made by python -m rmt_dist.data.convert"
    )
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return 0 if e.code in (0, None) else EXIT_BAD_INPUT
    rc = 0
    for beton in args.betons:
        try:
            print(verify_beton(beton, progress=sys.stderr.isatty()), flush=True)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            rc = 2
        except OSError as e:  # unreadable mid-way (I/O error, permissions): one line, not a traceback
            print(
                f"error: {beton}: cannot be read ({e.strerror or e}); check the file and its disk",
                file=sys.stderr,
            )
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
