"""MixToken (token labeling, Jiang et al. 2021) as RMT's released code applies it.

A box is sampled on the final token grid (stride 32); in the stem output (stride 4)
the box scaled by 8 is replaced by the same region of the batch-flipped images. After
the network, the dense (aux) logits inside the box are flipped back, so that row i of
the aux output predicts image i's own token labels at every position.

Box convention (as the released `rand_bbox`): `(bbx1, bby1, bbx2, bby2)` with bbx
indexing grid ROWS (the H axis) and bby grid COLUMNS (the W axis), half-open
[bbx1, bbx2) x [bby1, bby2), in final-grid units. The loss mixes the class target with
`mixtoken_lam(box, num_tokens)` = 1 - box area / tokens (the released loss does so).

All randomness comes from torch's default generator (CPU), so `torch.manual_seed`
makes it exactly reproducible and no device synchronization is needed.
"""

from __future__ import annotations

import math

import torch

MixTokenBox = tuple[int, int, int, int]


@torch.compiler.disable  # host-side ints by design; a compiled model calls it eagerly
def sample_mixtoken_box(grid_h: int, grid_w: int, beta: float = 1.0) -> MixTokenBox:
    """A random box on a grid_h x grid_w token grid; lam ~ Beta(beta, beta) is the kept share."""
    beta_t = torch.tensor(float(beta))
    lam = float(torch.distributions.Beta(beta_t, beta_t).sample())
    cut_rat = math.sqrt(1.0 - lam)
    cut_h = int(grid_h * cut_rat)
    cut_w = int(grid_w * cut_rat)
    cx = int(torch.randint(grid_h, ()))
    cy = int(torch.randint(grid_w, ()))
    bbx1 = min(max(cx - cut_h // 2, 0), grid_h)
    bby1 = min(max(cy - cut_w // 2, 0), grid_w)
    bbx2 = min(max(cx + cut_h // 2, 0), grid_h)
    bby2 = min(max(cy + cut_w // 2, 0), grid_w)
    return bbx1, bby1, bbx2, bby2


def flip_box_region(x: torch.Tensor, box: MixTokenBox, scale: int = 1) -> torch.Tensor:
    """x (B, H, W, C) with rows/cols of `box` * scale taken from the batch-flipped x.

    It is its own inverse: the model uses it to mix stem tokens (scale 8) and to un-mix
    the aux logits (scale 1). Returns a new tensor; gradients flow to both sources.
    """
    bbx1, bby1, bbx2, bby2 = (v * scale for v in box)
    out = x.clone()
    out[:, bbx1:bbx2, bby1:bby2, :] = x.flip(0)[:, bbx1:bbx2, bby1:bby2, :]
    return out


def unmix_tokens(tokens: torch.Tensor, box: MixTokenBox | None, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Flip the box region of (B, N, C) token outputs back; N = grid_h * grid_w (row-major).

    The model's train-mode aux output is already un-mixed with this; use it for token
    outputs obtained otherwise (or to mix (B, N, C) token targets the same way).
    """
    if box is None:
        return tokens
    grid_h, grid_w = grid_hw
    if tokens.shape[1] != grid_h * grid_w:
        raise ValueError(f"tokens have N={tokens.shape[1]} but grid {grid_h}x{grid_w} has {grid_h * grid_w}")
    grid = tokens.reshape(tokens.shape[0], grid_h, grid_w, tokens.shape[-1])
    return flip_box_region(grid, box).reshape(tokens.shape)


def mixtoken_lam(box: MixTokenBox | None, num_tokens: int) -> float:
    """Share of each mixed sample that is still its own image: weight of its class target."""
    if box is None:
        return 1.0
    bbx1, bby1, bbx2, bby2 = box
    return 1.0 - (bbx2 - bbx1) * (bby2 - bby1) / num_tokens
