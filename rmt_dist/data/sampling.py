"""Which samples each rank sees, and each sample's crop box, as pure functions of seeds.

Everything here depends only on (seed, epoch, [step,] rank, world_size), so a resumed
run replays exactly the batches it would have seen.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import DataError


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_samples)


def train_indices(
    num_samples: int,
    *,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    repeated_aug: bool = False,
    num_repeats: int = 3,
) -> np.ndarray:
    """This rank's sample indices for `epoch`, in order, `num_samples // world_size` of them.

    Plain: one shuffle of the whole set per epoch, cut to a multiple of world_size
    (DistributedSampler with drop_last), rank r takes positions r, r+W, ... - the ranks'
    shards are disjoint and together cover the shuffle up to world_size - 1 samples.
    Repeated augmentation (DeiT's RASampler): every shuffled index repeated `num_repeats`
    times in a row, padded by wrapping, rank r takes positions r, r+W, ... and keeps the
    first num_samples // world_size - so the copies of a sample land on different ranks
    (different augmentations) and an epoch still has the dataset's length. (DeiT also
    rounds the length down to a multiple of 256; we do not, so tiny sets work.)
    """
    perm = epoch_permutation(num_samples, seed, epoch)
    per_rank = num_samples // world_size
    if not repeated_aug:
        return perm[: per_rank * world_size][rank::world_size].astype(np.int64)
    repeated = np.repeat(perm, num_repeats)
    total = math.ceil(len(repeated) / world_size) * world_size
    repeated = np.concatenate([repeated, repeated[: total - len(repeated)]])
    return repeated[rank:total:world_size][:per_rank].astype(np.int64)


def eval_indices(num_samples: int, rank: int, world_size: int) -> np.ndarray:
    """A contiguous block per rank; together every sample exactly once, no padding."""
    return np.array_split(np.arange(num_samples, dtype=np.int64), world_size)[rank]


def random_resized_crop_boxes(
    rng: np.random.Generator,
    heights: np.ndarray,
    widths: np.ndarray,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    attempts: int = 10,
) -> np.ndarray:
    """torchvision's RandomResizedCrop.get_params, vectorised: (B, 4) int64 (top, left, height, width)."""
    b = len(heights)
    h = heights.astype(np.float64)[:, None]
    w = widths.astype(np.float64)[:, None]
    target = h * w * rng.uniform(scale[0], scale[1], (b, attempts))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(rng.uniform(log_lo, log_hi, (b, attempts)))
    cw = np.rint(np.sqrt(target * aspect))
    ch = np.rint(np.sqrt(target / aspect))
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = ok.argmax(axis=1)
    rows = np.arange(b)
    bw, bh = cw[rows, first], ch[rows, first]
    u_top, u_left = rng.random(b), rng.random(b)
    top = np.floor(u_top * (h[:, 0] - bh + 1))
    left = np.floor(u_left * (w[:, 0] - bw + 1))
    # No attempt fitted: torchvision's fallback, a centred crop clamped to the ratio range.
    miss = ~ok.any(axis=1)
    if miss.any():
        hh, ww = h[miss, 0], w[miss, 0]
        in_ratio = ww / hh
        fw = np.where(
            in_ratio < min(ratio), ww, np.where(in_ratio > max(ratio), np.rint(hh * max(ratio)), ww)
        )
        fh = np.where(in_ratio < min(ratio), np.rint(ww / min(ratio)), hh)
        bw[miss], bh[miss] = fw, fh
        top[miss], left[miss] = (hh - fh) // 2, (ww - fw) // 2
    return np.stack([top, left, bh, bw], axis=1).astype(np.int64)


def center_crop_boxes(
    heights: np.ndarray, widths: np.ndarray, size: int, crop_pct: float
) -> tuple[np.ndarray, np.ndarray]:
    """timm's eval transform, Resize(floor(size / crop_pct)) on the short side then
    CenterCrop(size), with torchvision's rounding, as arguments for `BatchDecoder.decode`:
    (boxes: the whole image, resize: (full_h, full_w, win_top, win_left))."""
    if not 0.0 < crop_pct <= 1.0:
        raise DataError(f"data.crop_pct {crop_pct}: must be in (0, 1]")
    short = math.floor(size / crop_pct)
    h, w = heights.astype(np.int64), widths.astype(np.int64)
    # torchvision: the long side is int(short * long / short_side); a square stays square.
    full_h = np.where(h <= w, short, (short * h / w).astype(np.int64))
    full_w = np.where(h <= w, (short * w / h).astype(np.int64), short)
    win_top = np.round((full_h - size) / 2.0).astype(np.int64)
    win_left = np.round((full_w - size) / 2.0).astype(np.int64)
    boxes = np.stack([np.zeros_like(h), np.zeros_like(h), h, w], axis=1)
    return boxes, np.stack([full_h, full_w, win_top, win_left], axis=1)
