"""AdamW with the paper's parameter groups and the learning-rate schedule (per step, or per epoch as the official runs)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..config import DerivedConfig


def no_decay(name: str, param: torch.Tensor) -> bool:
    """Norm weights, biases and every other 1-d parameter (scales, position tables) skip weight decay.

    Under FSDP2 `param` is a DTensor whose .ndim is that of the full parameter."""
    return param.ndim <= 1 or name.endswith(".bias")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay: list[nn.Parameter] = []
    keep: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (keep if no_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: DerivedConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    # foreach=False keeps the update order per parameter identical whatever the sharding.
    return torch.optim.AdamW(
        param_groups(model, o.weight_decay),
        lr=cfg.derived.lr,
        betas=(o.betas[0], o.betas[1]),
        eps=o.eps,
        weight_decay=o.weight_decay,
        foreach=False,
    )


ScheduleKind = Literal["per_step", "per_epoch_timm"]


@dataclass(frozen=True)
class LrSchedule:
    """Learning rate as a pure function of the optimizer step (so resume needs no state).

    `per_step`: linear warm-up from warmup_lr to the peak over warmup_steps, cosine from the
    peak to min_lr until cosine_end, then min_lr (the cool-down epochs) until the end.

    `per_epoch_timm`: the official runs' schedule, epoch by epoch. qhfan/RMT
    `classfication_release/main.py` and `classification_token_label_release/main.py` build
    timm's scheduler with `create_scheduler(args, optimizer)` (a CosineLRScheduler with
    t_in_epochs, t_initial = --epochs, warmup_prefix False, cycle_limit 1; timm
    `timm/scheduler/scheduler_factory.py`) and call `lr_scheduler.step(epoch)` once, after
    training epoch `epoch` (`step_update` is commented out in both `engine.py`). The
    scheduler's constructor sets the warm-up start (timm `timm/scheduler/cosine_lr.py`
    `__init__`: `update_groups(warmup_lr_init)`; the peak when there is no warm-up). So
    epoch 0 trains at warmup_lr and epoch e >= 1 at `epoch_value(e - 1)`: the lr is
    constant within an epoch and lags the scheduler by one epoch. Read in timm v0.4.5
    (zihangJiang/TokenLabeling `requirements.txt` pins it for tlt, which the starred release
    imports), v0.4.12 and v0.9.10 (pinned by `classfication_release/install.sh`): the three
    files are identical from v0.4.5 to v0.4.12, and the formula is the same in v0.9.10.
    """

    peak: float
    warmup_lr: float
    min_lr: float
    warmup_steps: int
    cosine_end: int
    total_steps: int
    kind: ScheduleKind = "per_step"
    steps_per_epoch: int = 1  # per_epoch_timm: optimizer steps per epoch

    def __call__(self, step: int) -> float:
        if self.kind == "per_epoch_timm":
            epoch = step // self.steps_per_epoch
            if epoch == 0:
                return self.warmup_lr if self.warmup_steps else self.peak
            return self.epoch_value(epoch - 1)
        if step < self.warmup_steps:
            return self.warmup_lr + (self.peak - self.warmup_lr) * step / self.warmup_steps
        if step >= self.cosine_end:
            return self.min_lr
        t = (step - self.warmup_steps) / max(1, self.cosine_end - self.warmup_steps)
        return self.min_lr + 0.5 * (self.peak - self.min_lr) * (1 + math.cos(math.pi * t))

    def epoch_value(self, t: int) -> float:
        """timm CosineLRScheduler._get_lr(t) for the official arguments, in timm's own
        arithmetic (so the values agree to the last bit): warm-up counted from t = 0, the
        cosine also counted from t = 0 (warmup_prefix False) over T = t_initial epochs, and
        lr_min once the single cycle is over (cycle_limit 1)."""
        warmup_t = self.warmup_steps // self.steps_per_epoch
        t_initial = self.cosine_end // self.steps_per_epoch
        if t < warmup_t:
            return self.warmup_lr + t * ((self.peak - self.warmup_lr) / warmup_t)
        if t >= t_initial:
            return self.min_lr
        return self.min_lr + 0.5 * (self.peak - self.min_lr) * (1 + math.cos(math.pi * t / t_initial))


def build_schedule(cfg: DerivedConfig, steps_per_epoch: int) -> LrSchedule:
    """`steps_per_epoch` counts optimizer steps (loader batches // optim.accum_steps, as the
    trainer passes it). The trainer calls the schedule at its position, epoch x steps_per_epoch
    + optimizer steps into the epoch (TrainState), so `step // steps_per_epoch` is the epoch
    whatever the accumulation, and after a resume on another world size."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    o = cfg.optim
    return LrSchedule(
        peak=cfg.derived.lr,
        warmup_lr=o.warmup_lr,
        min_lr=o.min_lr,
        warmup_steps=o.warmup_epochs * steps_per_epoch,
        cosine_end=o.epochs * steps_per_epoch,
        total_steps=(o.epochs + o.cooldown_epochs) * steps_per_epoch,
        kind=o.schedule,
        steps_per_epoch=steps_per_epoch,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
