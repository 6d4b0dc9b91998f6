"""Node-local staging (`data.stage_dir`): copy the betons and the token-label store to each
node's local disk once, then read them from there.

Why: N nodes x 8 ranks reading a 100+ GB beton at random from a shared file system is the
usual FFCV slowdown; a copy on local NVMe reads at disk speed and is made once per node.

How, per node, before the process group exists (so it is file-based): the node's local
rank 0 copies each input into `stage_dir` (`{node}` in it is replaced by the node name,
e.g. `/tmp/rmt-{node}`, useful where nodes share a file system) through a temporary name
and an atomic rename, verifies the copy (sizes, and for a beton its fingerprint against
its meta file), and logs progress and MB/s; then it writes a done-marker naming this job
attempt. The other ranks of the node poll for that marker (STAGE_WAIT_S at most), and
every rank then uses the local paths. A copy already there and intact (a requeue, a
second run on the same data) is verified and reused, not copied again. A failure on
local rank 0 is written into the marker so the waiting ranks stop with the same line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..atomic import atomic_path, atomic_write
from .errors import DataError

STAGE_WAIT_S = 4 * 3600  # a 150 GB beton at a slow 20 MB/s still fits
POLL_S = 0.5
CHUNK = 64 << 20
MARKER = ".staged.json"


class StageError(DataError):
    """Staging could not be done; the message names the path and the fix."""


def node_name(env=os.environ) -> str:
    return env.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def attempt_id(env=os.environ) -> str:
    """Same on every rank of one job attempt, different on a requeue or a new launch."""
    job = (
        env.get("SLURM_JOB_ID")
        or env.get("TORCHELASTIC_RUN_ID")
        or f"{env.get('MASTER_ADDR')}:{env.get('MASTER_PORT')}"
    )
    restart = env.get("SLURM_RESTART_COUNT") or env.get("TORCHELASTIC_RESTART_COUNT") or "0"
    return f"{job}.{restart}"


def stage_root(stage_dir: str, env=os.environ) -> Path:
    return Path(os.path.expandvars(stage_dir.replace("{node}", node_name(env)).replace("%n", node_name(env))))


def _log(msg: str) -> None:
    print(f"[rmt-dist stage] {msg}", file=sys.stderr, flush=True)


def _local_name(src: Path) -> str:
    """Distinct per source path, so two datasets with the same file names never collide."""
    return f"{hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:10]}-{src.name}"


def _files(src: Path) -> list[Path]:
    """A beton is itself plus its meta sidecar; a store directory is its top-level files."""
    if src.is_dir():
        return sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith("."))
    return [src, Path(f"{src}.meta.json")]


def _source_id(src: Path) -> dict:
    files = _files(src)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise StageError(
            f"cannot stage {src}: {missing[0]} does not exist (check data.train/data.val/tokenlabel.store)"
        )
    return {
        "source": str(src.resolve()),
        "files": {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in files},
    }


def _copy_file(src: Path, dst: Path, progress: Callable[[int], None]) -> None:
    try:
        with atomic_path(dst) as tmp, open(src, "rb") as fi, open(tmp, "wb") as fo:
            while chunk := fi.read(CHUNK):
                fo.write(chunk)
                progress(len(chunk))
            fo.flush()
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise StageError(
            f"copying {src} to {dst} failed: {e.strerror or e}; free space there or set "
            "data.stage_dir to a larger local disk (or null to read the shared copy)"
        ) from None


def _verify(src: Path, dst: Path, ident: dict) -> str | None:
    """Why the staged copy `dst` is not a faithful copy of `src`, or None."""
    for name, (size, _) in ident["files"].items():
        local = dst / name if src.is_dir() else (dst if name == src.name else Path(f"{dst}.meta.json"))
        if not local.is_file() or local.stat().st_size != size:
            return f"{local.name} missing or of the wrong size"
    if not src.is_dir():
        from .meta import beton_fingerprint, read_meta

        want = read_meta(dst).get("fingerprint")
        if want is not None and beton_fingerprint(dst) != want:
            return "fingerprint differs from its meta file"
    else:
        if (src / "meta.json").is_file() and (src / "meta.json").read_bytes() != (
            dst / "meta.json"
        ).read_bytes():
            return "meta.json differs"
    return None


def stage_one(src: Path, root: Path) -> Path:
    """Copy (or reuse) `src` under `root`; returns the local path. Local rank 0 only."""
    ident = _source_id(src)
    dst = root / _local_name(src)
    marker = root / f"{dst.name}{MARKER}"
    if marker.is_file():
        try:
            same = json.loads(marker.read_text()) == ident
        except ValueError:
            same = False
        reason = _verify(src, dst, ident) if same else "source changed since it was staged"
        if reason is None:
            _log(f"{src} -> {dst}: intact copy reused")
            return dst
        _log(f"{src}: staged copy not reused ({reason}); copying again")
        marker.unlink(missing_ok=True)
    total = sum(size for size, _ in ident["files"].values())
    free = shutil.disk_usage(root).free
    if free < total:
        raise StageError(
            f"data.stage_dir {root} has {free / 1e9:.1f} GB free, staging {src} needs {total / 1e9:.1f} GB;"
            " point data.stage_dir at a larger local disk or set it to null"
        )
    if src.is_dir():
        dst.mkdir(exist_ok=True)
    start, done = time.monotonic(), 0
    last = [start]

    def progress(n: int) -> None:
        nonlocal done
        done += n
        now = time.monotonic()
        if now - last[0] >= 5 or done == total:
            last[0] = now
            rate = done / 1e6 / max(now - start, 1e-6)
            _log(
                f"staging {src.name}: {100 * done / max(total, 1):.0f}% ({done / 1e6:.1f}/{total / 1e6:.1f} MB) "
                f"{rate:.0f} MB/s"
            )

    for f in _files(src):
        target = dst / f.name if src.is_dir() else (dst if f == src else Path(f"{dst}.meta.json"))
        _copy_file(f, target, progress)
    secs = time.monotonic() - start
    reason = _verify(src, dst, ident)
    if reason:
        raise StageError(
            f"staged copy {dst} of {src} failed verification ({reason}); check the local disk "
            "or set data.stage_dir=null"
        )
    _log(
        f"staged {src} -> {dst}: {total / 1e6:.1f} MB in {secs:.1f} s ({total / 1e6 / max(secs, 1e-6):.0f} MB/s), "
        "verified"
    )
    atomic_write(marker, json.dumps(ident))
    return dst


def _sources(cfg) -> dict[str, str]:
    out = {"data.train": cfg.data.train}
    if cfg.data.val:
        out["data.val"] = cfg.data.val
    if cfg.tokenlabel.enabled and cfg.tokenlabel.store:
        out["tokenlabel.store"] = cfg.tokenlabel.store
    return out


def _with_paths(cfg, local: dict[str, str]):
    data = dataclasses.replace(
        cfg.data, **{k.split(".", 1)[1]: v for k, v in local.items() if k.startswith("data.")}
    )
    tl = cfg.tokenlabel
    if "tokenlabel.store" in local:
        tl = dataclasses.replace(tl, store=local["tokenlabel.store"])
    return dataclasses.replace(cfg, data=data, tokenlabel=tl)


def stage(cfg, env=os.environ, wait_s: float = STAGE_WAIT_S):
    """`cfg` with its inputs pointing at this node's staged copies (unchanged without data.stage_dir)."""
    if not cfg.data.stage_dir:
        return cfg
    root = stage_root(cfg.data.stage_dir, env)
    done = root / f".done-{attempt_id(env)}"
    local_rank = int(env.get("LOCAL_RANK", "0"))
    if local_rank == 0:
        try:
            root.mkdir(parents=True, exist_ok=True)
            local = {k: str(stage_one(Path(v), root)) for k, v in _sources(cfg).items()}
            result: dict[str, Any] = {"ok": True, "paths": local}
        except StageError as e:
            result = {"ok": False, "error": str(e)}
        except OSError as e:
            result = {
                "ok": False,
                "error": f"data.stage_dir {root}: {e.strerror or e}; set data.stage_dir to a "
                "writable local directory, or null",
            }
        if root.is_dir():
            atomic_write(done, json.dumps(result))
    else:
        end = time.monotonic() + wait_s
        while not done.is_file():
            if time.monotonic() > end:
                raise StageError(
                    f"waited {wait_s:.0f} s for local rank 0 to stage the data into {root} "
                    f"({done.name} never appeared); see local rank 0's log on node {node_name(env)}"
                )
            time.sleep(POLL_S)
        result = json.loads(done.read_text())
    if not result["ok"]:
        raise StageError(result["error"])
    if local_rank == 0:
        _log(f"node {node_name(env)}: reading {', '.join(f'{k}={v}' for k, v in result['paths'].items())}")
    return _with_paths(cfg, result["paths"])
