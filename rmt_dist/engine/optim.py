"""AdamW with the paper's parameter groups and the per-step learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class LrSchedule:
    """Learning rate as a pure function of the optimizer step (so resume needs no state).

    Linear warm-up from warmup_lr to the peak over warmup_steps, cosine from the peak to
    min_lr until cosine_end, then min_lr (the cool-down epochs) until the end."""

    peak: float
    warmup_lr: float
    min_lr: float
    warmup_steps: int
    cosine_end: int
    total_steps: int

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_lr + (self.peak - self.warmup_lr) * step / self.warmup_steps
        if step >= self.cosine_end:
            return self.min_lr
        t = (step - self.warmup_steps) / max(1, self.cosine_end - self.warmup_steps)
        return self.min_lr + 0.5 * (self.peak - self.min_lr) * (1 + math.cos(math.pi * t))


def build_schedule(cfg: DerivedConfig, steps_per_epoch: int) -> LrSchedule:
    o = cfg.optim
    return LrSchedule(
        peak=cfg.derived.lr,
        warmup_lr=o.warmup_lr,
        min_lr=o.min_lr,
        warmup_steps=o.warmup_epochs * steps_per_epoch,
        cosine_end=o.epochs * steps_per_epoch,
        total_steps=(o.epochs + o.cooldown_epochs) * steps_per_epoch,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
