"""Manhattan Self-Attention (MaSA) with selectable kernels.

Math (per head h, decay g_h = log(1 - 2^-(a + b*h/n)) < 0, tokens i, j on the grid):

    out_i = sum_j softmax_j( <R_i q_i, R_j k_j> * d^-1/2 + g_h * |r_i - r_j| + g_h * |c_i - c_j| ) v_j

R is the released code's rotary "theta_shift" indexed by the flattened token index.
Full MaSA attends over the whole grid; decomposed MaSA attends along W (within each
row), then along H (within each column), exactly in that order as the released code.
The depthwise 5x5 conv on V (LCE, `lepe`) is added to the attention output.

Kernels (`attn_impl`), all fed the same cached tables (tables.py):
    reference  matmul + materialized bias + softmax + matmul (the released math; ground truth)
    sdpa       F.scaled_dot_product_attention with the cached (heads, L, L) bias broadcast over batch
    flex       FlexAttention whose score_mod computes the decay from token indices
               (compiled on CUDA; on CPU flex_attention runs eagerly and forward-only)
    auto       the fastest correct kernel for the device (see `resolve_attn_impl`)
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .layers import DWConv2d
from .tables import RetentionTables

ATTN_IMPLS = ("reference", "sdpa", "flex", "auto")

# `auto` per device type. CPU: measured (docs/perf.md, "Model"): PyTorch's CPU sdpa
# kernels are slower than matmul+softmax at MaSA's short rows (L = 7..196, d = 16..32).
# CUDA: sdpa's fused memory-efficient kernel takes the broadcast bias and needs no
# compile; flex only pays off under torch.compile, so it is opt-in.
_AUTO_IMPL = {"cpu": "reference", "cuda": "sdpa"}


def validate_attn_impl(attn_impl: str) -> str:
    if attn_impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl={attn_impl!r} is unknown; use one of {', '.join(ATTN_IMPLS)}")
    return attn_impl


def resolve_attn_impl(attn_impl: str, device_type: str) -> str:
    """The concrete kernel `attn_impl` stands for on `device_type` (only `auto` varies)."""
    if attn_impl == "auto":
        return _AUTO_IMPL.get(device_type, "reference")
    return attn_impl


def table_kind(attn_impl: str, decomposed: bool) -> str:
    """Which tables (tables.TABLE_KINDS) a resolved kernel reads."""
    if attn_impl == "flex":
        return "decay_only"
    return "decomposed_bias" if decomposed else "full_bias"


def theta_shift(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """The released rotary: x * cos + rotate_every_two(x) * sin.

    x: (B, H, W, heads, d); sin/cos: (H, W, d), `sin` pre-signed (tables.py), so
    rotate_every_two reduces to swapping each channel pair.
    """
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return x * cos.unsqueeze(2) + swapped * sin.unsqueeze(2)


def attend_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float):
    # The released code scales k before the product (k *= scaling); same here.
    scores = torch.matmul(q, (k * scale).transpose(-1, -2)) + bias
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def attend_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float):
    # bias is (heads, L, L): broadcast over the batch, never expanded per sample.
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


BIAS_KERNELS: dict[str, Callable[..., torch.Tensor]] = {
    "reference": attend_reference,
    "sdpa": attend_sdpa,
}


@functools.cache
def _compiled_flex_attention() -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    # Default dynamic shapes: after the first shape change, dynamo generalizes instead of
    # recompiling for every stage/resolution (dynamic=False would hit the recompile limit).
    return torch.compile(flex_attention)


def attend_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, score_mod: Callable, scale: float):
    from torch.nn.attention.flex_attention import flex_attention

    if q.is_cuda and not torch.compiler.is_compiling():
        return _compiled_flex_attention()(q, k, v, score_mod=score_mod, scale=scale)
    # Inside an outer torch.compile, dynamo lowers flex_attention itself; on CPU this is
    # the eager (unfused, forward-only) flex_attention, used to test the score_mod.
    return flex_attention(q, k, v, score_mod=score_mod, scale=scale)


def decay_score_mod_1d(decay: torch.Tensor) -> Callable:
    def score_mod(score, batch, head, q_idx, kv_idx):
        return score + decay[head] * (q_idx - kv_idx).abs()

    return score_mod


def decay_score_mod_2d(decay: torch.Tensor, width: int) -> Callable:
    def score_mod(score, batch, head, q_idx, kv_idx):
        rows = (q_idx // width - kv_idx // width).abs()
        cols = (q_idx % width - kv_idx % width).abs()
        return score + decay[head] * (rows + cols)

    return score_mod


class ProjectedMixer(nn.Module):
    """The parts every softmax token mixer shares: q/k/v/out projections and the LCE
    (5x5 depthwise conv on V). Attribute names are the released checkpoints'."""

    def __init__(self, dim: int, num_heads: int, decomposed: bool, attn_impl: str = "auto") -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}; pick a divisor of dim")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.decomposed = decomposed
        self.attn_impl = validate_attn_impl(attn_impl)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.lepe = DWConv2d(dim, 5, 1, 2)
        self.out_proj = nn.Linear(dim, dim)


class MaSA(ProjectedMixer):
    """Manhattan Self-Attention on (B, H, W, C) tokens; names match the released checkpoints."""

    def __init__(self, dim: int, num_heads: int, decomposed: bool, attn_impl: str = "auto") -> None:
        super().__init__(dim, num_heads, decomposed, attn_impl)
        if self.head_dim % 2 != 0:
            raise ValueError(
                f"head_dim={self.head_dim} is odd; the rotary needs channel pairs, pick even dim/num_heads"
            )
        # Score mods for eager compiled flex, one per (grid width, device): reusing the same
        # function object keeps torch.compile from recompiling every call.
        self._score_mods: dict[tuple, Callable] = {}

    def forward(self, x: torch.Tensor, tables: RetentionTables) -> torch.Tensor:
        batch, height, width, dim = x.shape
        impl = resolve_attn_impl(self.attn_impl, x.device.type)
        heads, head_dim = self.num_heads, self.head_dim
        q = self.q_proj(x)
        k = self.k_proj(x)
        v = self.v_proj(x)
        lepe = self.lepe(v)
        q = theta_shift(q.view(batch, height, width, heads, head_dim), tables.sin, tables.cos)
        k = theta_shift(k.view(batch, height, width, heads, head_dim), tables.sin, tables.cos)
        v = v.view(batch, height, width, heads, head_dim)
        if self.decomposed:
            out = self._decomposed(q, k, v, tables, impl)
        else:
            out = self._full(q, k, v, tables, impl)
        return self.out_proj(out + lepe)

    def _attend(self, q, k, v, bias: torch.Tensor, decay: torch.Tensor, impl: str, width: int | None):
        """Attention over the last-but-one axis of (batch', heads, L, d) tensors."""
        if impl == "flex":
            return attend_flex(q, k, v, self._score_mod(decay, width), self.scale)
        return BIAS_KERNELS[impl](q, k, v, bias, self.scale)

    def _score_mod(self, decay: torch.Tensor, width: int | None) -> Callable:
        make = (
            functools.partial(decay_score_mod_1d, decay)
            if width is None
            else functools.partial(decay_score_mod_2d, decay, width)
        )
        if torch.compiler.is_compiling():
            return make()  # traced inline; nothing to cache
        key = (width, decay.device)
        mod = self._score_mods.get(key)
        if mod is None:
            mod = self._score_mods[key] = make()
        return mod

    def _full(self, q, k, v, tables: RetentionTables, impl: str) -> torch.Tensor:
        batch, height, width, heads, head_dim = q.shape
        length = height * width

        def heads_first(t: torch.Tensor) -> torch.Tensor:  # (B, H, W, n, d) -> (B, n, HW, d)
            return t.permute(0, 3, 1, 2, 4).reshape(batch, heads, length, head_dim)

        out = self._attend(
            heads_first(q), heads_first(k), heads_first(v), tables.bias, tables.decay, impl, width
        )
        return out.transpose(1, 2).reshape(batch, height, width, heads * head_dim)

    def _decomposed(self, q, k, v, tables: RetentionTables, impl: str) -> torch.Tensor:
        batch, height, width, heads, head_dim = q.shape

        def along_w(t: torch.Tensor) -> torch.Tensor:  # (B, H, W, n, d) -> (B*H, n, W, d)
            return t.permute(0, 1, 3, 2, 4).reshape(batch * height, heads, width, head_dim)

        def along_h(t: torch.Tensor) -> torch.Tensor:  # (B, H, W, n, d) -> (B*W, n, H, d)
            return t.permute(0, 2, 3, 1, 4).reshape(batch * width, heads, height, head_dim)

        out_w = self._attend(along_w(q), along_w(k), along_w(v), tables.bias_w, tables.decay, impl, None)
        out_w = out_w.unflatten(0, (batch, height)).permute(0, 1, 3, 2, 4)  # (B, H, W, n, d)
        out = self._attend(along_h(q), along_h(k), along_h(out_w), tables.bias, tables.decay, impl, None)
        out = out.unflatten(0, (batch, width)).permute(0, 3, 1, 2, 4)  # (B, H, W, n, d)
        return out.reshape(batch, height, width, heads * head_dim)
