"""Distribution applied from outside the model, in one place and one fixed order:

    sync BatchNorm -> activation checkpointing -> compile -> shard/wrap (ddp | fsdp | deepspeed)

    prepare.py          model preparation (sync BatchNorm, device, channels_last, checkpointing, compile)
    sync_batchnorm.py   BatchNorm2d with statistics over all ranks (any device, gloo included)
    protocol.py         Strategy: the methods the trainer calls, nothing else
    torch_native.py     DDP and FSDP2 (torch optimizer, GradScaler, DCP checkpoints)
    deepspeed_zero.py   DeepSpeed ZeRO 1-3 (its precision, checkpoints and their conversion)
    (ZeRO-3's partition layout lives in rmt_dist/checkpoint_format/zero3.py: the weights reader shares it)

The model code itself knows nothing of distribution. Submodules import torch; this file
imports them only when `parallelize` is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from ...config import DerivedConfig
    from ..distributed import DistInfo
    from .protocol import Strategy


def parallelize(model: nn.Module, cfg: DerivedConfig, info: DistInfo) -> Strategy:
    """The one place where a single-device model becomes a distributed one."""
    from .prepare import prepare_model

    model = prepare_model(
        model,
        info.device,
        channels_last=cfg.model.channels_last,
        grad_checkpointing=cfg.model.grad_checkpointing,
        compile="blocks" if cfg.model.compile else "none",
        sync_batchnorm=cfg.strategy.sync_batchnorm,
    )
    if cfg.strategy.sync_batchnorm and info.is_main:
        import logging

        from .sync_batchnorm import describe_sync

        logging.getLogger("rmt_dist.parallel").info(describe_sync(model, info.world_size))
    if cfg.strategy.name == "deepspeed":
        from .deepspeed_zero import DeepSpeedStrategy

        return DeepSpeedStrategy(model, cfg, info)
    from .torch_native import TORCH_STRATEGIES

    return TORCH_STRATEGIES[cfg.strategy.name](model, cfg, info)
