"""Position tables of MaSA: the rotary (theta-shift) sin/cos and the Manhattan decay.

Everything here is a pure function of a stage's hyper-parameters and the token grid,
so nothing is stored in the state dict (the official `Relpos.angle` / `Relpos.decay`
buffers are recomputed and checked by `checkpoint_filter_fn`). A `RetentionTables`
instance is built once per (grid, device, dtype, kind) by `TableCache` and shared by
every block of the stage, so no forward pass rebuilds a table.

The arithmetic follows the released code step by step in float32 (same operations in
the same order) and is cast to the compute dtype only at the end, which keeps logits
within 1e-4 of the official model.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

# What a stage's attention kernels need besides the rotary tables.
TABLE_KINDS = ("full_bias", "decomposed_bias", "decay_only")


class RetentionTables(NamedTuple):
    """Tables for one stage at one grid size; tensors only, so blocks stay compile-friendly.

    sin, cos: (H, W, head_dim); `sin` already carries the sign of `rotate_every_two`
        (negative on even channels), so theta_shift(x) = x * cos + swap_pairs(x) * sin.
    bias: full MaSA: (heads, H*W, H*W); decomposed: the H-direction bias (heads, H, H).
    bias_w: decomposed only: the W-direction bias (heads, W, W); else an empty tensor.
    decay: (heads,) float32 log-decay per head (what FlexAttention's score_mod reads).
    """

    sin: torch.Tensor
    cos: torch.Tensor
    bias: torch.Tensor
    bias_w: torch.Tensor
    decay: torch.Tensor


def rotary_angles(head_dim: int) -> torch.Tensor:
    """The official `Relpos.angle` buffer: one frequency per channel pair, repeated twice."""
    angle = 1.0 / (10000 ** torch.linspace(0, 1, head_dim // 2))
    return angle.unsqueeze(-1).repeat(1, 2).flatten()


def head_decays(num_heads: int, init_value: float, heads_range: float) -> torch.Tensor:
    """The official `Relpos.decay` buffer: log(gamma) per head, gamma = 1 - 2^-(init + range*h/n)."""
    exponent = -init_value - heads_range * torch.arange(num_heads, dtype=torch.float) / num_heads
    return torch.log(1 - 2**exponent)


def _grid_distance_1d(length: int, device: torch.device) -> torch.Tensor:
    index = torch.arange(length, device=device, dtype=torch.float32)
    return (index[:, None] - index[None, :]).abs()


def _grid_distance_2d(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Manhattan distance between every pair of tokens of an H x W grid (row-major): (HW, HW)."""
    rows = torch.arange(height, device=device, dtype=torch.float32)
    cols = torch.arange(width, device=device, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(height * width, 2)
    return (grid[:, None, :] - grid[None, :, :]).abs().sum(dim=-1)


# Row stride (elements) of the stored bias. The fused CUDA sdpa kernels want the bias's
# strides aligned to 16 and otherwise pad a copy on every call (for a batch-expanded
# bias, a full per-sample copy); storing rows padded makes the cached view aligned.
BIAS_ROW_ALIGN = 16


def _aligned(bias: torch.Tensor) -> torch.Tensor:
    length = bias.shape[-1]
    padded_length = -(-length // BIAS_ROW_ALIGN) * BIAS_ROW_ALIGN
    storage = bias.new_zeros(*bias.shape[:-1], padded_length)
    storage[..., :length] = bias
    return storage[..., :length]


def build_tables(
    height: int,
    width: int,
    *,
    num_heads: int,
    head_dim: int,
    init_value: float,
    heads_range: float,
    kind: str,
    device: torch.device,
    dtype: torch.dtype,
) -> RetentionTables:
    if kind not in TABLE_KINDS:
        raise ValueError(f"table kind {kind!r} is unknown; use one of {TABLE_KINDS}")
    with torch.no_grad():
        angle = rotary_angles(head_dim).to(device)
        decay = head_decays(num_heads, init_value, heads_range).to(device)
        # The released code indexes the rotary by the flattened (row-major) token index.
        index = torch.arange(height * width, device=device, dtype=torch.float32)
        phase = index[:, None] * angle[None, :]
        sign = torch.ones(head_dim, device=device)
        sign[0::2] = -1.0
        sin = (torch.sin(phase) * sign).reshape(height, width, head_dim)
        cos = torch.cos(phase).reshape(height, width, head_dim)
        empty = torch.empty(0, device=device, dtype=dtype)
        bias, bias_w = empty, empty
        if kind == "full_bias":
            bias = _grid_distance_2d(height, width, device) * decay[:, None, None]
        elif kind == "decomposed_bias":
            bias = _grid_distance_1d(height, device) * decay[:, None, None]
            bias_w = _grid_distance_1d(width, device) * decay[:, None, None]
        return RetentionTables(
            sin=sin.to(dtype),
            cos=cos.to(dtype),
            bias=_aligned(bias.to(dtype)) if bias.numel() else empty,
            bias_w=_aligned(bias_w.to(dtype)) if bias_w.numel() else empty,
            decay=decay,
        )


class TableCache:
    """Memoizes `build_tables` for one stage, keyed by (H, W, device, dtype, kind).

    Plain attribute of a module (not a buffer): it never enters the state dict, is
    rebuilt lazily after `to()`/`to_empty()`, and deep copies (EMA) get their own.
    """

    def __init__(self, *, num_heads: int, head_dim: int, init_value: float, heads_range: float) -> None:
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.init_value = init_value
        self.heads_range = heads_range
        self._tables: dict[tuple, RetentionTables] = {}

    def get(
        self, height: int, width: int, device: torch.device, dtype: torch.dtype, kind: str
    ) -> RetentionTables:
        key = (height, width, device, dtype, kind)
        tables = self._tables.get(key)
        if tables is None:
            tables = build_tables(
                height,
                width,
                num_heads=self.num_heads,
                head_dim=self.head_dim,
                init_value=self.init_value,
                heads_range=self.heads_range,
                kind=kind,
                device=device,
                dtype=dtype,
            )
            self._tables[key] = tables
        return tables

    def clear(self) -> None:
        self._tables.clear()

    def __len__(self) -> int:
        return len(self._tables)
