"""The RMT model family; importing this package registers rmt_t/s/b/l and rmt_test with timm.

Construction lives in `factory` (`create`; `build.build_model` adds init weights), reading weights of any source in
`weights` (`read_weights`, `load_into`).
"""

from .build import build_model
from .factory import create, create_model
from .masa import ATTN_IMPLS, MaSA, resolve_attn_impl
from .mixers import ATTENTIONS, attention_class
from .mixtoken import MixTokenBox, flip_box_region, mixtoken_lam, sample_mixtoken_box, unmix_tokens
from .rmt import ARCHS, RMT, RMTBlock, RMTStage, checkpoint_filter_fn
from .weights import WeightsError, load_into, read_weights

__all__ = [
    "ARCHS",
    "ATTENTIONS",
    "ATTN_IMPLS",
    "RMT",
    "MaSA",
    "MixTokenBox",
    "RMTBlock",
    "RMTStage",
    "WeightsError",
    "attention_class",
    "build_model",
    "checkpoint_filter_fn",
    "create",
    "create_model",
    "flip_box_region",
    "load_into",
    "mixtoken_lam",
    "read_weights",
    "resolve_attn_impl",
    "sample_mixtoken_box",
    "unmix_tokens",
]
