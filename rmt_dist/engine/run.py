"""Run one rank of a training run from a Config: process group, signals, Trainer, clean-up.

Before the first step rank 0 takes the run dir's lock (one run per run dir), refuses a
FINISHED run dir and `checkpoint.resume=false` over an earlier run's checkpoints or
metrics (before anything in the dir is changed), checks the betons (size, fingerprint,
class counts: data/verify.py) and writes config.yaml; every rank learns of a failure there
and exits with the same code.
Every failure ends in one line (`error: ...`) with the reason and the fix: exit 2 for bad
input (recipe, data, a run dir in use or not writable, checkpoints that cannot be
resumed), 1 for a failure (divergence, a save that failed, e.g. on a full disk).
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import logging
import sys
from pathlib import Path

from ..config import Config, DerivedConfig, derive, to_yaml
from ..errors import BadInputError
from ..launching.errors import LaunchError
from . import preempt
from .checkpoint import CheckpointSaveError, ResumeError, _disk_hint, atomic_write, describe_error
from .distributed import DistInfo, broadcast_object, init_distributed, shutdown_distributed
from .faults import faults_from_env
from .trainer import Trainer, TrainingDiverged

log = logging.getLogger("rmt_dist.train")


class RunDirFailure(RuntimeError):
    """The run dir could not be written (a full disk): a failure (exit 1), not bad input."""


class _StartFailed(Exception):
    """Rank 0's start-up check failed (it printed the line); the other ranks exit with its code."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def setup_logging(rank: int) -> None:
    """One handler on the "rmt_dist" logger: INFO on rank 0, warnings only elsewhere."""
    logger = logging.getLogger("rmt_dist")
    for h in list(logger.handlers):
        if getattr(h, "_rmt_dist", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._rmt_dist = True  # type: ignore[attr-defined]
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", "%H:%M:%S")
    )
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False


def check_data(cfg: Config) -> None:
    """The betons a run reads, before the first step: intact, and with the model's classes."""
    from ..data.verify import check_beton, check_classes

    train = check_beton(cfg.data.train, "data.train")
    check_classes(train, "data.train", cfg.data.train, cfg.model.num_classes)
    if cfg.data.val:
        val = check_beton(cfg.data.val, "data.val")
        check_classes(val, "data.val", cfg.data.val, cfg.model.num_classes, train)


def _prepare_run_dir(cfg: Config, check_betons: bool):
    """Rank 0: lock, FINISHED, resume=false over an earlier run, data, config.yaml. Returns the
    held lock; raises with one line."""
    from ..launching.rundir import RunDirLock, check_fresh_start, check_not_finished

    run_dir = Path(cfg.run.dir)
    try:
        lock = RunDirLock(run_dir).acquire()
    except OSError as e:
        line = f"run.dir={cfg.run.dir} cannot be used: {describe_error(e)}; {_disk_hint(e, run_dir)}"
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST):
            raise LaunchError(line) from None  # bad input: choose another run.dir
        raise RunDirFailure(line) from None
    try:
        check_not_finished(run_dir)
        # Before anything is written: resume=false would truncate metrics.jsonl and replace checkpoints.
        check_fresh_start(run_dir, cfg.checkpoint.resume)
        if check_betons:
            check_data(cfg)
        try:
            atomic_write(run_dir / "config.yaml", to_yaml(cfg))
        except OSError as e:
            raise RunDirFailure(
                f"writing {run_dir / 'config.yaml'} failed: {describe_error(e)}; {_disk_hint(e, run_dir)}"
            ) from None
    except BaseException:
        lock.release()
        raise
    return lock


def _start(cfg: Config, info: DistInfo, check_betons: bool):
    """Collective: rank 0 prepares the run dir; a failure there stops every rank with its code."""
    lock, code = None, None
    if info.is_main:
        try:
            lock = _prepare_run_dir(cfg, check_betons)
        except BadInputError as e:
            log.error("error: %s", e)
            code = preempt.EXIT_BAD_INPUT
        except RunDirFailure as e:
            log.error("error: %s", e)
            code = preempt.EXIT_FAILED
    code = broadcast_object(code)
    if code is not None:
        raise _StartFailed(code)
    return lock


def _resume_own_requeue(cfg: DerivedConfig, is_main: bool) -> DerivedConfig:
    """`checkpoint.resume=false` asks for a fresh start of a run, not of every attempt of its
    job: a requeued attempt (preemption, time limit) continues what its own job wrote, or the
    fresh-start check would end the job at its first requeue."""
    from ..launching.requeue import own_requeue

    if cfg.checkpoint.resume or (job := own_requeue(cfg.run.dir)) is None:
        return cfg
    if is_main:
        log.warning(
            "checkpoint.resume=false, but this is a requeued attempt of job %s, which launched %s: "
            "resuming this job's own checkpoints",
            job,
            cfg.run.dir,
        )
    return dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, resume=True))


def run(cfg: Config, info: DistInfo | None = None, train_loader=None, eval_loader=None) -> int:
    """Train `cfg` on this rank; returns an exit code (preempt.EXIT_*), never calls sys.exit.

    Joins the process group from the environment unless `info` is given, and destroys it
    at the end only if it created it. A rank of its own process (no `info`) also watches
    its launcher and stops when the launcher is gone."""
    unwatch = preempt.watch_launcher() if info is None else (lambda: None)
    info = info or init_distributed(cfg.strategy.backend)
    setup_logging(info.rank)
    preempt.clear_stop()
    restore = preempt.install_signal_handlers() if cfg.checkpoint.save_on_signal else (lambda: None)
    trainer = lock = None
    rc = preempt.EXIT_FAILED
    try:
        cfg = _resume_own_requeue(derive(cfg, info.world_size), info.is_main)
        lock = _start(cfg, info, check_betons=train_loader is None)
        if info.is_main:
            log.info(
                "run dir %s: %s on %d rank(s), %s, global batch %d, peak lr %.3e, EMA decay %s",
                cfg.run.dir,
                cfg.model.name,
                info.world_size,
                cfg.strategy.name,
                cfg.derived.global_batch,
                cfg.derived.lr,
                cfg.derived.ema_decay,
            )
        trainer = Trainer(
            cfg,
            info,
            train_loader=train_loader,
            eval_loader=eval_loader,
            faults=faults_from_env(info.rank, info.world_size),
        )
        rc = trainer.train()
    except _StartFailed as e:
        rc = e.code
    except (TrainingDiverged, CheckpointSaveError) as e:
        if info.is_main:  # every rank raised the same (agreed) error: one line, from rank 0
            log.error("error: %s", e)
        rc = preempt.EXIT_FAILED
    except BadInputError as e:  # bad input: one line, no traceback
        if info.is_main or not isinstance(e, ResumeError):
            log.error("error: %s", e)
        rc = preempt.EXIT_BAD_INPUT
    except OSError as e:  # a full disk or a run dir gone read-only mid-run
        log.error(
            "error: training failed on rank %d: %s; %s",
            info.rank,
            describe_error(e),
            _disk_hint(e, Path(cfg.run.dir)),
        )
        rc = preempt.EXIT_FAILED
    except Exception:
        log.exception("training failed on rank %d", info.rank)
        rc = preempt.EXIT_FAILED
    except BaseException as e:  # DCP's CheckpointException is a BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        log.error("error: training failed on rank %d: %s", info.rank, describe_error(e))
        rc = preempt.EXIT_FAILED
    finally:
        if trainer is not None:
            trainer.close()
        if lock is not None:
            lock.release()
        unwatch()
        restore()
        disarm = preempt.guard_teardown(rc)
        # Free the model, loaders and their threads here, under the guard, before the group
        # goes, not when this frame is torn down.
        trainer = None
        gc.collect()
        shutdown_distributed(info)
        disarm()
    return rc
