"""Run one rank of a training run from a Config: process group, signals, Trainer, clean-up."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from ..config import Config, ConfigError, derive, save_config
from ..data.errors import DataError
from ..models.weights import WeightsError
from ..tokenlabel.store import TokenLabelStoreError
from . import preempt
from .distributed import DistInfo, init_distributed, shutdown_distributed
from .trainer import Trainer, TrainingDiverged

log = logging.getLogger("rmt_dist.train")


def setup_logging(rank: int) -> None:
    """One handler on the "rmt_dist" logger: INFO on rank 0, warnings only elsewhere."""
    logger = logging.getLogger("rmt_dist")
    for h in list(logger.handlers):
        if getattr(h, "_rmt_dist", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._rmt_dist = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False


def run(cfg: Config, info: DistInfo | None = None, train_loader=None, eval_loader=None) -> int:
    """Train `cfg` on this rank; returns an exit code (preempt.EXIT_*), never calls sys.exit.

    Joins the process group from the environment unless `info` is given, and destroys it
    at the end only if it created it."""
    info = info or init_distributed(cfg.strategy.backend)
    setup_logging(info.rank)
    preempt.clear_stop()
    restore = preempt.install_signal_handlers() if cfg.checkpoint.save_on_signal else (lambda: None)
    trainer = None
    try:
        cfg = derive(cfg, info.world_size)
        if info.is_main:
            save_config(cfg, Path(cfg.run.dir) / "config.yaml")
            log.info("run dir %s: %s on %d rank(s), %s, global batch %d, peak lr %.3e, EMA decay %s",
                     cfg.run.dir, cfg.model.name, info.world_size, cfg.strategy.name, cfg.derived.global_batch,
                     cfg.derived.lr, cfg.derived.ema_decay)
        trainer = Trainer(cfg, info, train_loader=train_loader, eval_loader=eval_loader)
        return trainer.train()
    except TrainingDiverged as e:
        log.error("%s", e)
        return preempt.EXIT_FAILED
    except (ConfigError, DataError, TokenLabelStoreError, WeightsError) as e:  # bad input: one line, no traceback
        log.error("error: %s", e)
        return preempt.EXIT_BAD_INPUT
    except Exception:
        log.exception("training failed on rank %d", info.rank)
        return preempt.EXIT_FAILED
    finally:
        if trainer is not None:
            trainer.close()
        restore()
        shutdown_distributed(info)
