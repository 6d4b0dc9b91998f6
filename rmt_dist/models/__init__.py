"""The RMT model family; importing this package registers rmt_t/s/b/l and rmt_test with timm."""

from .masa import ATTN_IMPLS, MaSA, resolve_attn_impl
from .mixers import ATTENTIONS, attention_class
from .mixtoken import MixTokenBox, flip_box_region, mixtoken_lam, sample_mixtoken_box, unmix_tokens
from .rmt import ARCHS, RMT, RMTBlock, RMTStage, checkpoint_filter_fn

__all__ = [
    "ARCHS",
    "ATTENTIONS",
    "ATTN_IMPLS",
    "RMT",
    "MaSA",
    "MixTokenBox",
    "RMTBlock",
    "RMTStage",
    "attention_class",
    "checkpoint_filter_fn",
    "flip_box_region",
    "mixtoken_lam",
    "resolve_attn_impl",
    "sample_mixtoken_box",
    "unmix_tokens",
]
