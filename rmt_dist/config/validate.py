"""Checks that span several keys; each error names the key, the value and the fix."""

from __future__ import annotations

from .errors import ConfigError
from .schema import Config


def _check(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {msg}")


def validate(cfg: Config, where: str) -> None:
    d, o, s = cfg.data, cfg.optim, cfg.slurm
    for key, value in [
        ("data.batch_size", d.batch_size),
        ("optim.epochs", o.epochs),
        ("optim.accum_steps", o.accum_steps),
        ("checkpoint.every_steps", cfg.checkpoint.every_steps),
        ("checkpoint.keep_last", cfg.checkpoint.keep_last),
        ("run.log_every", cfg.run.log_every),
        ("slurm.nodes", s.nodes),
        ("slurm.cpus_per_task", s.cpus_per_task),
        ("data.img_size", d.img_size),
        ("tokenlabel.size", cfg.tokenlabel.size),
    ]:
        _check(value >= 1, where, f"{key} must be >= 1, got {value}")
    _check(s.gpus_per_node >= 0, where, f"slurm.gpus_per_node must be >= 0, got {s.gpus_per_node}")
    _check(
        s.tasks_per_node is None or s.tasks_per_node >= 1,
        where,
        f"slurm.tasks_per_node must be >= 1 or null, got {s.tasks_per_node}",
    )
    _check(
        d.img_size % 32 == 0,
        where,
        f"data.img_size must be a multiple of 32 (RMT downsamples 32x), got {d.img_size}",
    )
    _check(0 < d.crop_pct <= 1, where, f"data.crop_pct must be in (0, 1], got {d.crop_pct}")
    _check(d.num_workers >= 0, where, f"data.num_workers must be >= 0, got {d.num_workers}")
    _check(
        len(d.scale) == 2 and 0 < d.scale[0] <= d.scale[1] <= 1,
        where,
        f"data.scale must be [min, max] with 0 < min <= max <= 1, got {d.scale}",
    )
    _check(
        len(d.ratio) == 2 and 0 < d.ratio[0] <= d.ratio[1],
        where,
        f"data.ratio must be [min, max] with 0 < min <= max, got {d.ratio}",
    )
    _check(len(d.mean) == 3 and len(d.std) == 3, where, "data.mean and data.std need 3 values (RGB)")
    _check(
        d.interpolation != "random" or d.augment_order == "tlt",
        where,
        "data.interpolation=random (bilinear or bicubic drawn per op and per crop) is implemented for "
        "data.augment_order=tlt only; set data.augment_order=tlt or data.interpolation=bicubic|bilinear",
    )
    _check(d.num_repeats >= 1, where, f"data.num_repeats must be >= 1, got {d.num_repeats}")
    for key, p in [
        ("data.hflip", d.hflip),
        ("data.reprob", d.reprob),
        ("data.mixup_prob", d.mixup_prob),
        ("data.mixup_switch_prob", d.mixup_switch_prob),
        ("data.label_smoothing", d.label_smoothing),
    ]:
        _check(0 <= p <= 1, where, f"{key} must be a probability in [0, 1], got {p}")
    _check(
        0 <= o.warmup_epochs < o.epochs,
        where,
        f"optim.warmup_epochs must be in [0, optim.epochs={o.epochs}), got {o.warmup_epochs}",
    )
    _check(o.cooldown_epochs >= 0, where, f"optim.cooldown_epochs must be >= 0, got {o.cooldown_epochs}")
    _check(o.lr > 0, where, f"optim.lr must be > 0, got {o.lr}")
    _check(len(o.betas) == 2, where, f"optim.betas needs two values, got {o.betas}")
    _check(0 < cfg.ema.decay < 1, where, f"ema.decay must be in (0, 1), got {cfg.ema.decay}")
    if cfg.strategy.name == "deepspeed":
        _check(
            cfg.strategy.zero_stage in (1, 2, 3),
            where,
            f"strategy.zero_stage must be 1, 2 or 3 for deepspeed, got {cfg.strategy.zero_stage}",
        )
    _check(
        cfg.run.stop_after_steps is None or cfg.run.stop_after_steps >= 1,
        where,
        f"run.stop_after_steps must be >= 1 or null, got {cfg.run.stop_after_steps}",
    )
    tl = cfg.tokenlabel
    if tl.enabled:
        _check(
            cfg.model.token_label,
            where,
            "tokenlabel.enabled needs a token-label model head: set model.token_label=true",
        )
        _check(
            tl.store is not None,
            where,
            "tokenlabel.enabled needs tokenlabel.store (make one with python -m rmt_dist.tokenlabel.generate)",
        )
        _check(
            d.mixup == 0 and d.cutmix == 0,
            where,
            f"token labeling replaces mixup/cutmix (MixToken); set data.mixup=0 data.cutmix=0 "
            f"(got mixup={d.mixup}, cutmix={d.cutmix})",
        )
