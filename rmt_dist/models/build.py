"""The training model of a config: `factory.create(cfg.model)` + `model.init_checkpoint`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from .factory import create
from .weights import load_into

if TYPE_CHECKING:
    from rmt_dist.config import Config


def build_model(cfg: Config) -> nn.Module:
    """Randomly initialised, then (when `model.init_checkpoint` is set) loaded from any source
    `read_weights` accepts; a classifier of another class count stays fresh (fine-tuning)."""
    model = create(cfg.model, mix_token=cfg.tokenlabel.mix_token)
    if cfg.model.init_checkpoint:
        load_into(model, cfg.model.init_checkpoint, new_head_ok=True, what="model.init_checkpoint")
    return model
