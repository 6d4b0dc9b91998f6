"""Model construction: the one place a recipe's `model:` section becomes an nn.Module.

The trainer, the FLOP counter, export/evaluate (templates for consolidated weights), the
token-label teacher and `bench/` all build models here, so a model option is wired once.
`rmt_dist.models.build.build_model(cfg)` adds `model.init_checkpoint` (kept apart from this
module because reading a run dir builds a template model here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from rmt_dist.config import ModelConfig


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """`timm.create_model(name, **kwargs)` with the RMT family registered (random init)."""
    import timm

    from . import rmt  # noqa: F401  (registers rmt_t/s/b/l and rmt_test with timm)

    return timm.create_model(name, **kwargs)


def create(model_cfg: ModelConfig, *, mix_token: bool = True, **overrides: Any) -> nn.Module:
    """The model a `model:` config section describes, randomly initialised (no init_checkpoint).

    `mix_token` is `tokenlabel.mix_token` (it only matters with `model.token_label`)."""
    kwargs: dict[str, Any] = dict(
        num_classes=model_cfg.num_classes,
        drop_path_rate=model_cfg.drop_path_rate,
        attn_impl=model_cfg.attn_impl,
        attention=model_cfg.attention,
    )
    if model_cfg.token_label:
        kwargs.update(token_label=True, mix_token=mix_token)
    kwargs.update(overrides)
    return create_model(model_cfg.name, **kwargs)
