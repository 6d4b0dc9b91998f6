"""Checkpoint directories: run.dir/checkpoints/step_XXXXXXXX/, newest complete one resumed.

Layout of one checkpoint:
    dcp/                  model, optimizer, EMA (torch.distributed.checkpoint; ddp/fsdp)
    ds/, ema*.pt          DeepSpeed's own checkpoint and the EMA (deepspeed)
    ds_universal/         ds/ in DeepSpeed's universal format, made at a resume on another world size
    rank_XXXXX.pt         per-rank RNG states (python, numpy, torch, cuda) and grad scaler
    train_state.json      step, epoch, position in the epoch, counters, world size
    COMPLETE              written last: a manifest {file: {size, crc32}} of everything above
and checkpoints/latest names the newest complete checkpoint; it is replaced (atomically)
only after COMPLETE exists. The crc32s are computed right after writing, each rank
reading its share of the files, and verified the same way before a checkpoint is loaded.
A directory without a valid COMPLETE, or whose files do not match the manifest (missing,
truncated, a checksum mismatch), is skipped at resume with a warning naming the file, and
the next older complete one is tried.

A failed save (disk full, read-only file system, a DCP error) removes its directory on
every rank and raises CheckpointSaveError with one line; the older checkpoints stay.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from ..atomic import atomic_write
from ..checkpoint_format.dirs import (  # noqa: F401  (re-exported: the engine's readers and tests use them)
    MARKER,
    POINTER,
    TRAIN_STATE,
    checksum_reason,
    describe_error,
    file_crc32,
    invalid_reason,
    list_files,
    list_step_dirs,
    rank_file,
    read_manifest,
    read_train_state,
    resolve_checkpoint,
    resume_candidates,
    sizes_manifest,
    step_dir_name,
    step_of,
)
from ..errors import BadInputError, RmtDistError
from .distributed import DistInfo, all_gather_object, barrier, broadcast_object

log = logging.getLogger(__name__)

_E = TypeVar("_E")  # what a rank reports to _agree


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


class CheckpointSaveError(RmtDistError, RuntimeError):
    """A checkpoint could not be written; the message is one line with the reason and the fix."""


class ResumeError(BadInputError, ValueError):
    """Checkpoints exist but none can be resumed from (bad input: exit 2); one line."""


def _disk_hint(e: BaseException, where: Path) -> str:
    """The fix for a failed write: free space (ENOSPC, or an error from a writer that hides
    it, e.g. torch.save's "unexpected pos" on a full disk), or a writable run.dir."""
    errno_ = getattr(e, "errno", None)
    failures = getattr(e, "failures", None)
    if isinstance(failures, dict) and failures:
        inner = sorted(failures.items())[0][1]
        errno_ = getattr(inner[0] if isinstance(inner, tuple) else inner, "errno", errno_)
    if errno_ in (30, 13):  # EROFS, EACCES
        return f"{where} is not writable: make it writable or set run.dir to a writable folder"
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        free = None
    if errno_ == 28 or (free is not None and free < 16 << 20):
        left = f" ({free} bytes free)" if free is not None else ""
        return (
            f"no space left on the file system of {where}{left}: free space there (or set run.dir "
            "elsewhere), then relaunch to resume"
        )
    return "check the file system of the run dir, then relaunch to resume"


class CheckpointManager:
    def __init__(self, run_dir: str | os.PathLike, keep_last: int, info: DistInfo):
        self.root = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last
        self.info = info
        self.unreadable: set[Path] = set()  # failed at resume: never counted, never pruned
        self.skipped: dict[Path, str] = {}  # every candidate rejected at resume, with its reason

    def _agree(self, error: _E | None) -> _E | None:
        """Collective: the first rank's error (rank order), or None when every rank succeeded."""
        return next((e for e in all_gather_object(error) if e), None)

    def _fail(self, path: Path, step: int, error: str, hint: str) -> CheckpointSaveError:
        barrier()
        if self.info.is_main:
            shutil.rmtree(path, ignore_errors=True)  # nothing half-written stays behind
        barrier()
        return CheckpointSaveError(f"saving checkpoint step {step} to {path} failed: {error}; {hint}")

    def save(
        self, step: int, strategy, ema_state: dict | None, train_state: dict, config_yaml: str = ""
    ) -> Path:
        """Collective: every rank writes its part and checksums a share of the files; rank 0
        seals it (COMPLETE, then latest). Raises CheckpointSaveError on every rank on failure."""
        path = self.root / step_dir_name(step)
        failure: tuple[str, str] | None = None  # (one-line error, fix) on this rank
        if self.info.is_main:
            try:
                if path.exists():  # left over by an attempt that died before COMPLETE
                    shutil.rmtree(path)
                path.mkdir(parents=True)
            except OSError as e:
                failure = (describe_error(e), _disk_hint(e, self.root))
        if failure := self._agree(failure):
            raise self._fail(path, step, *failure)
        try:
            strategy.save(path, ema_state)
            torch.save({"rng": rng_state(), **strategy.extra_state()}, path / rank_file(self.info.rank))
            if self.info.is_main:
                atomic_write(path / TRAIN_STATE, json.dumps(train_state, indent=1))
                if config_yaml:  # the checkpoint stays exportable when copied away from its run dir
                    atomic_write(path / "config.yaml", config_yaml)
        except BaseException as e:  # DCP's CheckpointException is a BaseException
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            failure = (describe_error(e), _disk_hint(e, path))
        if failure := self._agree(failure):
            raise self._fail(path, step, *failure)
        # Checksums right after writing, each rank reading its share of the files.
        names = broadcast_object(list_files(path) if self.info.is_main else None)
        try:
            sums = {n: file_crc32(path / n) for n in names[self.info.rank :: self.info.world_size]}
        except OSError as e:
            failure = (describe_error(e), _disk_hint(e, path))
            sums = {}
        if failure := self._agree(failure):
            raise self._fail(path, step, *failure)
        merged: dict[str, str] = {}
        for part in all_gather_object(sums):
            merged.update(part)
        if self.info.is_main:
            try:
                files = {n: {"size": (path / n).stat().st_size, "crc32": merged[n]} for n in names}
                atomic_write(path / MARKER, json.dumps({"step": step, "files": files}, indent=1))
                atomic_write(self.root / POINTER, path.name + "\n")
            except OSError as e:
                failure = (describe_error(e), _disk_hint(e, path))
        if failure := broadcast_object(failure):
            raise self._fail(path, step, *failure)
        if self.info.is_main:
            self._prune(path)
        barrier()
        return path

    def _prune(self, newest: Path) -> None:
        """Delete what save_policy.to_prune says; directories that failed to load at resume
        are left for the user to inspect."""
        from .save_policy import Saved, to_prune

        def saved(path: Path) -> Saved:
            return Saved(path, step_of(path), invalid_reason(path) is None, _bad_streak(path))

        older = [
            saved(p)
            for p in list_step_dirs(self.root)
            if p != newest and p not in self.unreadable and step_of(p) <= step_of(newest)
        ]
        for path in to_prune(saved(newest), older, self.keep_last):
            shutil.rmtree(path, ignore_errors=True)

    def candidates(self) -> list[Path]:
        """Rank 0 decides (one directory scan, one set of warnings), everyone gets the list."""
        skipped: dict[Path, str] = {}
        found = resume_candidates(self.root, skipped) if self.info.is_main else None
        got = broadcast_object(
            ([str(p) for p in found], {str(k): v for k, v in skipped.items()}) if found is not None else None
        )
        self.skipped.update({Path(k): v for k, v in got[1].items()})
        # Sealed but damaged: not ours to delete (the user may restore them); only a save
        # of the same step replaces one.
        self.unreadable.update(p for p in self.skipped if (p / MARKER).is_file())
        return [Path(p) for p in got[0]]

    def verify(self, path: Path) -> str | None:
        """Collective: the checksums of `path`, each rank reading a share; the first mismatch or None."""
        names = broadcast_object(sorted(read_manifest(path)) if self.info.is_main else None)
        return self._agree(checksum_reason(path, names[self.info.rank :: self.info.world_size]))

    def load_rank_state(self, path: Path) -> dict | None:
        f = path / rank_file(self.info.rank)
        return torch.load(f, map_location="cpu", weights_only=False) if f.is_file() else None


def _bad_streak(path: Path) -> int:
    try:
        return int(json.loads((path / TRAIN_STATE).read_text()).get("bad_streak", 0))
    except (OSError, ValueError, TypeError):
        return 0
