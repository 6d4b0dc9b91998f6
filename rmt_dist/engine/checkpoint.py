"""Checkpoint directories: run.dir/checkpoints/step_XXXXXXXX/, newest complete one resumed.

Layout of one checkpoint:
    dcp/                  model, optimizer, EMA (torch.distributed.checkpoint; ddp/fsdp)
    ds/, ema*.pt          DeepSpeed's own checkpoint and the EMA (deepspeed)
    ds_universal/         ds/ in DeepSpeed's universal format, made at a resume on another world size
    rank_XXXXX.pt         per-rank RNG states (python, numpy, torch, cuda) and grad scaler
    train_state.json      step, epoch, position in the epoch, counters, world size
    COMPLETE              written last: a manifest {file: size} of everything above
and checkpoints/latest names the newest complete checkpoint; it is replaced (atomically)
only after COMPLETE exists. A directory without a valid COMPLETE, or whose files do not
match the manifest (truncated, missing), is skipped at resume with a warning naming it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from .distributed import DistInfo, barrier, broadcast_object

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
POINTER = "latest"
TRAIN_STATE = "train_state.json"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _manifest(path: Path) -> dict[str, int]:
    return {str(f.relative_to(path)): f.stat().st_size for f in sorted(path.rglob("*")) if f.is_file()
            and f.name != MARKER}


def invalid_reason(path: Path) -> str | None:
    """Why `path` cannot be resumed from, or None when it is complete and intact."""
    marker = path / MARKER
    if not marker.is_file():
        return "no COMPLETE marker (the save was interrupted)"
    try:
        manifest = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return "unreadable COMPLETE marker"
    for name, size in manifest.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, the manifest says {size} (truncated or corrupt)"
    try:
        json.loads((path / TRAIN_STATE).read_text())
    except (OSError, ValueError):
        return f"{TRAIN_STATE} is unreadable"
    return None


def list_step_dirs(root: Path) -> list[Path]:
    """Checkpoint directories, newest step first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def resume_candidates(root: Path) -> list[Path]:
    """Complete checkpoints, newest first; every skipped directory is named in a warning."""
    good = []
    for path in list_step_dirs(root):
        reason = invalid_reason(path)
        if reason:
            log.warning("checkpoint %s skipped: %s", path, reason)
        else:
            good.append(path)
    return good


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A run dir, its checkpoints/ dir, or one checkpoint dir -> the checkpoint dir to read."""
    p = Path(path)
    if (p / MARKER).is_file() or (p / TRAIN_STATE).is_file():
        reason = invalid_reason(p)
        if reason:
            raise ValueError(f"checkpoint {p} is not usable: {reason}")
        return p
    root = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    good = resume_candidates(root)
    if not good:
        raise ValueError(f"no complete checkpoint under {p} (expected a run dir or a checkpoints/step_* dir)")
    return good[0]


class CheckpointManager:
    def __init__(self, run_dir: str | os.PathLike, keep_last: int, info: DistInfo):
        self.root = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last
        self.info = info

    def save(self, step: int, strategy, ema_state: dict | None, train_state: dict, config_yaml: str = "") -> Path:
        """Collective: every rank writes its part; rank 0 seals it (COMPLETE, then latest)."""
        path = self.root / step_dir_name(step)
        if self.info.is_main:
            if path.exists():  # left over by an attempt that died before COMPLETE
                shutil.rmtree(path)
            path.mkdir(parents=True)
        barrier()
        strategy.save(path, ema_state)
        torch.save({"rng": rng_state(), **strategy.extra_state()}, path / rank_file(self.info.rank))
        if self.info.is_main:
            _atomic_write(path / TRAIN_STATE, json.dumps(train_state, indent=1))
            if config_yaml:  # the checkpoint stays exportable when copied away from its run dir
                _atomic_write(path / "config.yaml", config_yaml)
        barrier()
        if self.info.is_main:
            _atomic_write(path / MARKER, json.dumps({"step": step, "files": _manifest(path)}, indent=1))
            _atomic_write(self.root / POINTER, path.name + "\n")
            self._prune(path)
        barrier()
        return path

    def _prune(self, newest: Path) -> None:
        complete = 0
        for path in list_step_dirs(self.root):
            if path == newest or (complete < self.keep_last and invalid_reason(path) is None):
                complete += 1
                continue
            if int(_STEP_DIR.match(path.name).group(1)) < int(_STEP_DIR.match(newest.name).group(1)):
                shutil.rmtree(path, ignore_errors=True)

    def candidates(self) -> list[Path]:
        """Rank 0 decides (one directory scan, one set of warnings), everyone gets the list."""
        found = resume_candidates(self.root) if self.info.is_main else None
        return [Path(p) for p in broadcast_object([str(p) for p in found] if found is not None else None)]

    def load_rank_state(self, path: Path) -> dict | None:
        f = path / rank_file(self.info.rank)
        return torch.load(f, map_location="cpu", weights_only=False) if f.is_file() else None


def read_train_state(path: Path) -> dict:
    return json.loads((path / TRAIN_STATE).read_text())
