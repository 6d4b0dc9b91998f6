"""The Trainer: one rank's training loop with `train_step` (one optimizer step) and `train`.

Its position and counters are a TrainState (train_state.py); the learning rate is a pure
function of the position, so resume needs no scheduler state. A checkpoint at step k holds
the state after step k; resuming continues with step k + 1 from batch k's successor. When
to save is save_policy.py's, what the user sees reporting.py's, how the model is
distributed the Strategy's (parallel/): the trainer names no strategy.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoint_format.dirs import model_mismatch
from ..config import DerivedConfig, to_yaml
from ..models.build import build_model
from . import preempt
from .checkpoint import (
    MARKER,
    CheckpointManager,
    ResumeError,
    describe_error,
    invalid_reason,
    list_step_dirs,
    read_train_state,
    set_rng_state,
)
from .criterion import build_criterion
from .distributed import DistInfo, all_gather_object, all_reduce_sum, broadcast_object
from .ema import Ema
from .evaluation import evaluate
from .faults import Faults
from .metrics import MetricsWriter
from .optim import build_schedule
from .parallel import parallelize
from .perf import PerfMeter
from .reporting import Reporter
from .save_policy import SavePolicy
from .train_state import TrainState

log = logging.getLogger("rmt_dist.train")


class TrainingDiverged(RuntimeError):
    """run.max_bad_steps consecutive steps had a non-finite loss or gradient norm."""


@dataclass
class StepStats:
    step: int
    loss: float  # mean over ranks and micro-batches (nan when non-finite somewhere)
    lr: float
    grad_norm: float
    applied: bool
    bad: bool  # non-finite loss or gradient norm: update skipped, counts toward max_bad_steps
    overflow: bool  # fp16 loss-scale overflow: update skipped, scale lowered
    stop_requested: bool  # some rank got SIGTERM/SIGUSR2 or request_stop()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Everything one rank needs; `train()` runs to the end, a stop step, a signal or a failure.

    `train_loader`/`eval_loader` default to the FFCV loaders of rmt_dist.data; tests may
    pass objects with the same interface (`steps_per_epoch`, `epoch(e, start_step)`, and
    an iterable of (images, labels)). `faults` (tests) injects NaN losses and signals.

    `state` is the TrainState: `trainer.state.state_dict()` / `load_state_dict(...)`."""

    def __init__(
        self,
        cfg: DerivedConfig,
        info: DistInfo,
        train_loader=None,
        eval_loader=None,
        faults: Faults | None = None,
    ):
        if cfg.derived.world_size != info.world_size:
            raise ValueError(
                f"cfg.derived.world_size={cfg.derived.world_size} but the process group has "
                f"{info.world_size} ranks: call derive(cfg, world_size) first"
            )
        assert cfg.derived.global_batch is not None and cfg.derived.ema_decay is not None  # derive() ran
        self.cfg, self.info = cfg, info
        self.accum = cfg.optim.accum_steps
        # Loaders first: a bad dataset or token-label store fails before the model is built.
        self.train_loader = train_loader if train_loader is not None else self._build_train_loader()
        seed_everything(cfg.run.seed)  # the same initial weights on every rank
        self.strategy = parallelize(build_model(self._model_config_to_build()), cfg, info)
        seed_everything(cfg.run.seed + 1000003 * info.rank)  # distinct drop-path / MixToken per rank
        self.ema = (
            Ema(self.strategy.ema_sources(), cfg.derived.ema_decay, cfg.ema.on_cpu, cfg.ema.every_steps)
            if cfg.ema.enabled
            else None
        )
        self._eval_loader = eval_loader
        self.steps_per_epoch = self.train_loader.steps_per_epoch // self.accum
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"the loader gives {self.train_loader.steps_per_epoch} batches per rank per epoch, fewer "
                f"than optim.accum_steps={self.accum}: lower data.batch_size or optim.accum_steps"
            )
        self.schedule = build_schedule(cfg, self.steps_per_epoch)
        self.total_steps = self.schedule.total_steps
        self.total_epochs = cfg.optim.epochs + cfg.optim.cooldown_epochs
        self.criterion = build_criterion(cfg)
        self.faults = faults
        self.state = TrainState(world_size=info.world_size, global_batch=cfg.derived.global_batch)
        self.save_policy = SavePolicy.from_config(cfg.checkpoint, self.total_steps)
        self.checkpoints = CheckpointManager(cfg.run.dir, cfg.checkpoint.keep_last, info)
        self.resumed_from = self._resume() if cfg.checkpoint.resume else None
        self.report = Reporter(
            info.is_main,
            self.total_steps,
            cfg.run.log_every,
            MetricsWriter(cfg.run.dir, info.is_main, self.state.step, cfg.run.tensorboard),
            PerfMeter(self.strategy.module, cfg, info),
        )
        self.last_saved_step = self.state.step if self.resumed_from else -1
        self.eval_results: list[dict] = []

    # -- construction helpers --------------------------------------------------------
    def _model_config_to_build(self) -> DerivedConfig:
        """The config to build the model from: without `model.init_checkpoint` when a
        checkpoint will be resumed (its weights replace the initial ones), so a requeue never
        depends on that file still being there, nor reads it again on every rank."""
        cfg = self.cfg
        if not (cfg.model.init_checkpoint and cfg.checkpoint.resume):
            return cfg
        if not any(invalid_reason(p) is None for p in list_step_dirs(Path(cfg.run.dir) / "checkpoints")):
            return cfg  # nothing complete to resume: start from the initial weights
        if self.info.is_main:
            log.info("model.init_checkpoint not read: resuming from a checkpoint in %s", cfg.run.dir)
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_checkpoint=None))

    def _build_train_loader(self):
        from rmt_dist.data import build_train_loader

        loader = build_train_loader(
            self.cfg, rank=self.info.rank, world_size=self.info.world_size, device=self.info.device
        )
        log.info("train data %s", loader.describe())
        if self.cfg.tokenlabel.enabled:  # batches become (images, (cls_target, dense_target))
            from rmt_dist.tokenlabel.loader import TokenLabelTrainLoader

            loader = TokenLabelTrainLoader(loader, self.cfg, device=self.info.device)
        return loader

    @property
    def eval_loader(self):
        if self._eval_loader is None and self.cfg.data.val:
            from rmt_dist.data import build_eval_loader

            self._eval_loader = build_eval_loader(
                self.cfg, rank=self.info.rank, world_size=self.info.world_size, device=self.info.device
            )
        return self._eval_loader

    # -- checkpoints ------------------------------------------------------------------
    def checkpoint_train_state(self) -> dict:
        """train_state.json of a checkpoint: the TrainState, the strategy's layout, the model's identity."""
        return {
            **self.state.state_dict(),
            **self.strategy.checkpoint_identity(),
            "model": {
                "name": self.cfg.model.name,
                "num_classes": self.cfg.model.num_classes,
                "token_label": self.cfg.model.token_label,
                "attention": self.cfg.model.attention,
            },
        }

    def _resume(self):
        """Load the newest checkpoint that verifies and loads; fall back to older ones. When
        checkpoints exist and none can be used, refuse (ResumeError) instead of silently
        starting from step 0 and pruning them; a strategy or model change is refused with
        the fix (a world-size change is converted by TrainState.load_state_dict)."""
        failed: list[str] = []
        for path in self.checkpoints.candidates():
            mismatch = broadcast_object(self._mismatch(path) if self.info.is_main else None)
            if mismatch:
                raise ResumeError(f"checkpoint {path} {mismatch}")
            reason = self.checkpoints.verify(path) or self._load(path)
            if reason is None:
                self._restore_position(path)
                return path
            if self.info.is_main:
                log.warning("checkpoint %s skipped: %s", path, reason)
            self.checkpoints.unreadable.add(path)
            failed.append(f"{path.name}: {reason}")
        # Directories without COMPLETE are interrupted saves, not checkpoints: they never block a start.
        sealed = broadcast_object(
            [f"{p.name}: {r}" for p, r in self.checkpoints.skipped.items() if (p / MARKER).is_file()]
            if self.info.is_main
            else None
        )
        if failed or sealed:
            raise ResumeError(
                f"{self.checkpoints.root} holds checkpoints but none can be resumed from "
                f"({'; '.join(failed + sealed)}); restore them, move them out of that folder to start from "
                "step 0, or pass run.dir=<new dir>"
            )
        return None

    def _load(self, path) -> str | None:
        """Collective: load `path` on every rank; the first rank's error (one line) or None."""
        error = None
        try:
            self.strategy.load(path, self.ema.state if self.ema else None)
        except BaseException as e:  # DCP's CheckpointException is a BaseException
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            error = f"loading failed: {describe_error(e)}"
        return next((e for e in all_gather_object(error) if e), None)

    def _mismatch(self, path) -> str | None:
        """How `path` was made differently from this run in a way no load can convert, with the fix
        (checkpoint_format/dirs.py: the launchers' pre-flight asks the same, torch-free)."""
        ts = read_train_state(path)
        return self.strategy.refuses(ts) or model_mismatch(path, ts, self.cfg.model)

    def _restore_position(self, path) -> None:
        ts = read_train_state(path)
        s = self.state
        s.load_state_dict(ts, self.steps_per_epoch)
        if s.same_layout(ts):
            rank_state = self.checkpoints.load_rank_state(path)
            if rank_state:
                set_rng_state(rank_state["rng"])
                self.strategy.load_extra_state(rank_state)
        else:
            seed_everything(self.cfg.run.seed + 1000003 * self.info.rank + s.step)
            if self.info.is_main:
                log.warning(
                    "resuming a %d-rank checkpoint on %d ranks: the data order changes from here on and the "
                    "peak lr/EMA decay follow the new global batch %d (was %d)",
                    ts["world_size"],
                    self.info.world_size,
                    self.cfg.derived.global_batch,
                    ts["global_batch"],
                )
        if self.info.is_main:
            log.info(
                "resumed from %s at step %d (epoch %d, batch %d of %d)",
                path,
                s.step,
                s.epoch,
                s.step_in_epoch,
                self.steps_per_epoch,
            )

    def save_checkpoint(self) -> bool:
        """Collective. Refuses (returns False) when any rank holds non-finite weights."""
        self.strategy.settle()
        finite = self.strategy.params_finite() and (self.ema is None or self.ema.finite())
        if all_reduce_sum([0.0 if finite else 1.0], self.info.device)[0] > 0:
            log.error(
                "not saving step %d: non-finite weights on some rank (the last good checkpoint stays)",
                self.state.step,
            )
            return False
        t0 = time.perf_counter()
        path = self.checkpoints.save(
            self.state.step,
            self.strategy,
            self.ema.state if self.ema else None,
            self.checkpoint_train_state(),
            to_yaml(self.cfg),
        )
        self.last_saved_step = self.state.step
        if self.info.is_main:
            log.info("saved checkpoint %s (%.1f s)", path, time.perf_counter() - t0)
        return True

    # -- one optimizer step ------------------------------------------------------------
    def position(self) -> int:
        return self.state.epoch * self.steps_per_epoch + self.state.step_in_epoch

    def train_step(self, micro_batches: list) -> StepStats:
        """Forward/backward over `accum_steps` micro-batches, then one (possibly skipped) update;
        the state moves on by one step (also in the epoch: `train` rolls the epoch over)."""
        step = self.state.step + 1
        lr = self.schedule(self.position())
        self.strategy.train(True)
        # Forward passes update BatchNorm statistics; a skipped step must not keep them
        # (a NaN batch would poison them). The buffers are tiny, so a copy per step is cheap.
        buffers = list(self.strategy.module.buffers())
        saved_buffers = [b.detach().clone() for b in buffers]
        loss_sum, bad, stop, backwards = 0.0, False, False, 0
        n = len(micro_batches)
        faults = self.faults
        if faults:
            faults.step_started(step)
        for i, (images, targets) in enumerate(micro_batches):
            loss = self.criterion(self.strategy.forward(images), targets)
            if faults:
                loss = faults.loss(loss, step)
            value = float(loss.detach())
            # One collective per micro-batch: the loss (for the log), non-finite flags, stop requests.
            total, nonfinite, stops = all_reduce_sum(
                [
                    value if math.isfinite(value) else 0.0,
                    0.0 if math.isfinite(value) else 1.0,
                    1.0 if preempt.stop_requested() else 0.0,
                ],
                self.info.device,
            )
            loss_sum += total / self.info.world_size
            bad |= nonfinite > 0
            stop |= stops > 0
            if bad and n == 1:
                break  # nothing accumulated yet: skip backward and the update everywhere
            # With accumulation the remaining backwards still run, so every strategy's
            # accumulation state stays consistent; the update is dropped below.
            self.strategy.backward(loss, n, sync=i == n - 1)
            backwards += 1
        if bad:
            out = self.strategy.skip_step(lr, backwards)
            outcome_norm, applied, overflow = out.grad_norm, out.applied, False
            if applied:
                raise TrainingDiverged(
                    f"step {step}: non-finite loss with optim.accum_steps={n} "
                    f"{self.strategy.cannot_skip_hint()}"
                )
        else:
            out = self.strategy.finish_step(lr)
            outcome_norm, applied, overflow = out.grad_norm, out.applied, out.overflow
            bad = not applied and not overflow
        if not applied:
            with torch.no_grad():
                for b, saved in zip(buffers, saved_buffers, strict=True):
                    b.copy_(saved)
        if applied:
            self.strategy.after_step()
            if self.ema:
                self.ema.update(self.strategy.ema_sources(), step)
        self.state.count(bad, overflow)
        mean_loss = loss_sum / n if not bad or applied else float("nan")
        return StepStats(step, mean_loss, lr, outcome_norm, applied, bad, overflow, stop)

    # -- evaluation --------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        loader = self.eval_loader
        if loader is None:
            return {}
        self.strategy.train(False)
        results = evaluate(self.strategy.forward, loader, self.info.device, "eval")
        if self.ema:
            with self.strategy.ema_swapped(self.ema):
                results.update(evaluate(self.strategy.forward, loader, self.info.device, "eval_ema"))
        self.strategy.settle()
        self.strategy.train(True)
        return results

    # -- the loop ---------------------------------------------------------------------
    def train(self) -> int:
        """Run until the schedule ends (0), run.stop_after_steps (0), a stop request
        (preempt.EXIT_PREEMPTED) or a failure (raises TrainingDiverged)."""
        cfg, s = self.cfg, self.state
        assert self.cfg.derived.global_batch is not None  # derive() ran (checked in __init__)
        stop_at = cfg.run.stop_after_steps
        if stop_at is not None and s.step >= stop_at:
            log.info(
                "run.stop_after_steps=%d already reached (resumed at step %d): nothing to do", stop_at, s.step
            )
            return preempt.EXIT_OK
        self.report.start(s.step)
        exit_code = preempt.EXIT_OK
        try:
            while s.epoch < self.total_epochs:
                batches = self.train_loader.epoch(s.epoch, start_step=s.step_in_epoch * self.accum)
                it = iter(batches)
                stopping = False
                while s.step_in_epoch < self.steps_per_epoch:
                    micro = [next(it) for _ in range(self.accum)]
                    stats = self.train_step(micro)
                    self.report.step_done(stats, s, cfg.derived.global_batch)
                    if stats.bad and s.bad_streak >= cfg.run.max_bad_steps:
                        raise TrainingDiverged(
                            f"{s.bad_streak} consecutive steps (up to step {s.step}) had a non-finite loss or gradient "
                            f"norm (run.max_bad_steps={cfg.run.max_bad_steps}); {self._last_good()}. "
                            "Lower optim.lr, set optim.clip_grad, or use bf16"
                        )
                    epoch_end = s.step_in_epoch == self.steps_per_epoch
                    if epoch_end:
                        self._end_epoch()
                    stopping = stats.stop_requested or (stop_at is not None and s.step >= stop_at)
                    want_save = self.save_policy.wants_save(s.step, epoch_end, stopping, stats.stop_requested)
                    if want_save and self.last_saved_step != s.step:
                        if not self.save_checkpoint() and (stopping or s.step >= self.total_steps):
                            # The run's last save was refused: its end state is lost, not done.
                            exit_code = preempt.EXIT_FAILED
                            if self.info.is_main:
                                log.error(
                                    "error: the final checkpoint (step %d) was refused for non-finite "
                                    "weights; %s. Lower optim.lr, set optim.clip_grad, or use bf16, then "
                                    "relaunch to resume",
                                    s.step,
                                    self._last_good(),
                                )
                    if stopping:
                        if stats.stop_requested and exit_code == preempt.EXIT_OK:
                            exit_code = preempt.EXIT_PREEMPTED
                            if self.info.is_main:
                                log.warning(
                                    "stop requested (%s): exiting at step %d",
                                    preempt.stop_reason() or "signal on another rank",
                                    s.step,
                                )
                        break
                    if epoch_end:
                        break
                if hasattr(batches, "close"):
                    batches.close()
                if stopping:
                    break
        finally:
            seconds = self.report.stop()
        self.report.summary(s, seconds, self.eval_results, self.last_saved_step)
        return exit_code

    def _last_good(self) -> str:
        if self.last_saved_step < 0:
            return "no checkpoint was saved"
        return f"the last good checkpoint is intact: {self.checkpoints.root}/step_{self.last_saved_step:08d}"

    def _end_epoch(self) -> None:
        s, cfg = self.state, self.cfg
        finished = s.epoch + 1
        if self.eval_loader is not None and (
            finished % cfg.run.eval_every_epochs == 0 or finished == self.total_epochs
        ):
            t0 = time.perf_counter()
            results = self.evaluate()
            record = {"step": s.step, "epoch": s.epoch, **results, "eval_time_s": time.perf_counter() - t0}
            self.eval_results.append(record)
            self.report.eval_done(record, finished, results)
        s.next_epoch()

    def close(self) -> None:
        self.report.close()
