"""Token mixers selectable with `attention=` (recipes: `model.attention`).

Each has the constructor (dim, num_heads, decomposed, attn_impl) and forward(x_bhwc,
tables): `masa` is RMT's Manhattan self-attention (masa.py); `gmm`, `vicinity` and
`vanilla` are the spatial-prior ablations (spatial_prior.py).
"""

from __future__ import annotations

from torch import nn

from .masa import MaSA
from .spatial_prior import GaussianMixtureMaskAttention, VanillaAttention, VicinityAttention

ATTENTIONS: dict[str, type[nn.Module]] = {
    "masa": MaSA,
    "gmm": GaussianMixtureMaskAttention,
    "vicinity": VicinityAttention,
    "vanilla": VanillaAttention,
}


def attention_class(name: str) -> type[nn.Module]:
    if name not in ATTENTIONS:
        raise ValueError(f"attention={name!r} is unknown; use one of {', '.join(ATTENTIONS)}")
    return ATTENTIONS[name]
