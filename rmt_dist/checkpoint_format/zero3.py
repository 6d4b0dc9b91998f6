"""ZeRO-3's partition layout, the one description of it (the strategy and export read it):
a parameter of `numel` elements is flattened and cut into `world` equal partitions of
ceil(numel / world) elements, rank r holding [r * size, (r + 1) * size); the last
partition is zero-padded at the end. Buffers and unpartitioned tensors are whole on every rank."""

from __future__ import annotations

import torch


def join_partitions(
    parts: list[torch.Tensor], numel: int, shape: torch.Size | tuple[int, ...]
) -> torch.Tensor:
    """The full tensor from every rank's partition, in rank order (the padding cut off)."""
    return torch.cat([p.reshape(-1) for p in parts])[:numel].view(shape)


def partition_of(full: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """Rank `rank`'s partition (`size` elements, zero-padded at the end) of a full tensor."""
    flat = full.reshape(-1)
    piece = flat[rank * size :][:size]
    return torch.cat([piece, piece.new_zeros(size - piece.numel())])
