"""Values derived from the recipe and the launch size, computed here and nowhere else."""

from __future__ import annotations

import dataclasses

from .schema import Config, DerivedConfig, RunPlan


def global_batch(cfg: Config, world_size: int) -> int:
    """Images per optimizer step across all ranks."""
    return cfg.data.batch_size * world_size * cfg.optim.accum_steps


def derive(cfg: Config, world_size: int) -> DerivedConfig:
    """`cfg` with its RunPlan for a run on `world_size` ranks (re-derives a DerivedConfig).

    - lr: optim.lr x global_batch / optim.lr_ref_batch (the official linear scaling rule);
    - ema_decay: ema.decay ** (global_batch / ema.decay_ref_batch), so the EMA averages
      over the same number of images whatever the batch.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    gb = global_batch(cfg, world_size)
    o, e = cfg.optim, cfg.ema
    lr = o.lr * gb / o.lr_ref_batch if o.lr_ref_batch else o.lr
    decay = e.decay ** (gb / e.decay_ref_batch) if e.decay_ref_batch else e.decay
    sections = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(Config)}
    plan = RunPlan(world_size=world_size, global_batch=gb, lr=lr, ema_decay=decay)
    return DerivedConfig(**sections, derived=plan)
