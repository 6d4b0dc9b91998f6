"""The DeepSpeed config, generated from the recipe so the two never disagree.

A user JSON (strategy.deepspeed_config) is deep-merged over the generated config, except
for the keys the recipe owns (listed in RECIPE_OWNED with the recipe key to set instead).
Typical overrides: zero_optimization.{overlap_comm, reduce_bucket_size,
allgather_bucket_size, contiguous_gradients, offload_optimizer, offload_param,
stage3_prefetch_bucket_size, stage3_param_persistence_threshold, ...},
fp16.{initial_scale_power, loss_scale_window, hysteresis, min_loss_scale},
communication_data_type, comms_logger, flops_profiler.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError

RECIPE_OWNED = {
    "train_batch_size": "data.batch_size / optim.accum_steps",
    "train_micro_batch_size_per_gpu": "data.batch_size",
    "gradient_accumulation_steps": "optim.accum_steps",
    "gradient_clipping": "optim.clip_grad",
    "optimizer": "optim.*",
    "scheduler": "optim.* (the engine steps the schedule itself)",
    "fp16.enabled": "precision",
    "bf16.enabled": "precision",
    "zero_optimization.stage": "strategy.zero_stage",
}


def generated_config(cfg: Config, world_size: int) -> dict[str, Any]:
    o = cfg.optim
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": o.accum_steps,
        "train_batch_size": cfg.data.batch_size * o.accum_steps * world_size,
        "gradient_clipping": float(o.clip_grad or 0.0),
        "zero_optimization": {"stage": cfg.strategy.zero_stage},
        # The optimizer is the engine's own AdamW (param groups without weight decay on 1-d params).
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        "fp16": {
            "enabled": cfg.precision == "fp16",
            "loss_scale": 0,
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        # check_grad_overflow: a non-finite gradient norm skips the step under bf16 too.
        "bf16": {"enabled": cfg.precision == "bf16", "check_grad_overflow": True},
    }
    return ds


def _merge(dst: dict, src: dict, path: str, where: str) -> None:
    for key, value in src.items():
        dotted = f"{path}{key}"
        if dotted in RECIPE_OWNED:
            raise ConfigError(
                f"{where}: {dotted} is set by the recipe; set {RECIPE_OWNED[dotted]} instead of "
                f"overriding it in the DeepSpeed JSON"
            )
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, dotted + ".", where)
        else:
            dst[key] = value


def deepspeed_config(cfg: Config, world_size: int) -> dict[str, Any]:
    ds = generated_config(cfg, world_size)
    path = cfg.strategy.deepspeed_config
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"strategy.deepspeed_config: file {path!r} does not exist")
        try:
            user = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(user, dict):
            raise ConfigError(f"{path}: a DeepSpeed config must be a JSON object")
        _merge(ds, user, "", path)
    return ds
