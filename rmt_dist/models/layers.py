"""Convolutional pieces of RMT, on (B, H, W, C) tokens; names match the released checkpoints."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DWConv2d(nn.Module):
    """Depthwise conv applied to (B, H, W, C) tokens (CPE, LCE and the FFN conv)."""

    def __init__(self, dim: int, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, stride, padding, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A contiguous BHWC tensor permuted to NCHW is channels_last: no copy either way.
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class FeedForward(nn.Module):
    """fc1 -> GELU -> (x + dwconv3x3(x)) -> fc2, as the released `FeedForwardNetwork`."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.dwconv = DWConv2d(hidden_dim, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.fc1(x))
        x = x + self.dwconv(x)
        return self.fc2(x)


class ConvStem(nn.Module):
    """Four 3x3 convs (strides 2, 1, 2, 1) with BN and GELU: images -> (B, H/4, W/4, C)."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        half = embed_dim // 2
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, half, 3, 2, 1),
            nn.BatchNorm2d(half),
            nn.GELU(),
            nn.Conv2d(half, half, 3, 1, 1),
            nn.BatchNorm2d(half),
            nn.GELU(),
            nn.Conv2d(half, embed_dim, 3, 2, 1),
            nn.BatchNorm2d(embed_dim),
            nn.GELU(),
            nn.Conv2d(embed_dim, embed_dim, 3, 1, 1),
            nn.BatchNorm2d(embed_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class PatchMerging(nn.Module):
    """3x3 stride-2 conv + BN between stages: (B, H, W, C) -> (B, H/2, W/2, C')."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.reduction = nn.Conv2d(dim, out_dim, 3, 2, 1)
        self.norm = nn.BatchNorm2d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
