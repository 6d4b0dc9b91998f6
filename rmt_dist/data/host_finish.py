"""The CPU device's last step of a training batch, in one parallel pass of the loader's
worker threads: normalise, random erasing, mixup/cutmix.

On CUDA these run as torch ops on the device (`device_augment.py`). On a CPU "device"
the same torch ops would run on the training thread, over 40-80 MB float batches, with
the cores the workers need: mixup alone cost ~20 ms per 64-image batch there (a flipped
copy of the batch, then two passes), as much as decoding a third of the batch. Here each
output value is computed once, straight from the uint8 images, in the same float32
arithmetic and order as the torch path, so both paths give identical batches:

    v_k = erasing noise inside image k's erased box, else (x_k - mean) * inv_std
    mixup:  out_k = v_k * float32(lam) + v_{B-1-k} * float32(1 - lam)   (timm's order)
    cutmix: out_k = v_{B-1-k} inside the box, v_k outside
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from .device_augment import MixParams

# Columns of the per-image erasing table: box, then where its noise lies in the flat noise
# array and its strides (pixel mode: (3, h, w) values; rand/const: (3, 1, 1)).
TOP, LEFT, HEIGHT, WIDTH, OFFSET, STRIDE_C, STRIDE_Y, STRIDE_X = range(8)


def erasing_table(
    boxes: list[tuple[int, int, int, int] | None], mode: str, batch: int, generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(table int64 (batch, 8), noise float32) for `boxes` from `sample_erasing`, drawing the
    noise in image order from `generator` exactly as `device_augment.apply_erasing` does."""
    table = np.zeros((batch, 8), np.int64)
    chunks = []
    offset = 0
    for i, box in enumerate(boxes):
        if box is None:
            continue
        top, left, h, w = box
        if mode == "pixel":
            fill = torch.empty((3, h, w), dtype=torch.float32).normal_(generator=generator)
            strides = (h * w, w, 1)
        elif mode == "rand":
            fill = torch.empty((3, 1, 1), dtype=torch.float32).normal_(generator=generator)
            strides = (1, 0, 0)
        else:
            fill = torch.zeros((3, 1, 1), dtype=torch.float32)
            strides = (1, 0, 0)
        table[i] = (top, left, h, w, offset, *strides)
        chunks.append(fill.numpy().ravel())
        offset += fill.numel()
    noise = np.concatenate(chunks) if chunks else np.zeros(1, np.float32)
    return table, noise


@njit(nogil=True)
def _row(images, k, y, mean, inv_std, erase, noise, row):
    """row (3, W) <- image k's row y, normalised, with its erased box filled."""
    w = images.shape[2]
    for c in range(3):
        m, s = mean[c], inv_std[c]
        for x in range(w):
            row[c, x] = (np.float32(images[k, y, x, c]) - m) * s
    e = erase[k]
    if e[HEIGHT] > 0 and e[TOP] <= y < e[TOP] + e[HEIGHT]:
        base = e[OFFSET] + (y - e[TOP]) * e[STRIDE_Y]
        for c in range(3):
            for x in range(e[WIDTH]):
                row[c, e[LEFT] + x] = noise[base + c * e[STRIDE_C] + x * e[STRIDE_X]]


@njit(nogil=True)
def _store(out, k, y, row, other, lam, one_minus_lam, mix, channels_last):
    """out[k, :, y] <- row, or row * lam + other * (1 - lam) when `mix` (timm's order)."""
    w = row.shape[1]
    if channels_last:
        for x in range(w):
            for c in range(3):
                out[k, y, x, c] = row[c, x] * lam + other[c, x] * one_minus_lam if mix else row[c, x]
    elif mix:
        for c in range(3):
            for x in range(w):
                out[k, c, y, x] = row[c, x] * lam + other[c, x] * one_minus_lam
    else:
        for c in range(3):
            for x in range(w):
                out[k, c, y, x] = row[c, x]


@njit(nogil=True, parallel=True, cache=True)
def finish_batch(images, out, mean, inv_std, channels_last, erase, noise, cutmix, lam, one_minus_lam, box):
    """uint8 (B, H, W, 3) -> float32 `out` (B, 3, H, W), or (B, H, W, 3) memory when
    `channels_last`, mixed: mixup, or cutmix inside box (y_lo, y_hi, x_lo, x_hi) when `cutmix`.
    Works on the pairs (k, B-1-k) the mixing couples, a row of both at a time."""
    b, h, w, _ = images.shape
    for k in prange((b + 1) // 2):
        j = b - 1 - k
        rk = np.empty((3, w), np.float32)
        rj = np.empty((3, w), np.float32)
        for y in range(h):
            _row(images, k, y, mean, inv_std, erase, noise, rk)
            _row(images, j, y, mean, inv_std, erase, noise, rj)
            if cutmix and box[0] <= y < box[1]:  # swap the pasted segment
                seg = rk[:, box[2] : box[3]].copy()
                rk[:, box[2] : box[3]] = rj[:, box[2] : box[3]]
                rj[:, box[2] : box[3]] = seg
            _store(out, k, y, rk, rj, lam, one_minus_lam, not cutmix, channels_last)
            if j != k:
                _store(out, j, y, rj, rk, lam, one_minus_lam, not cutmix, channels_last)


@njit(nogil=True, parallel=True, cache=True)
def normalize_erase(images, out, mean, inv_std, channels_last, erase, noise):
    """`finish_batch` without mixing, in a single write pass per image (the common eval and
    crop+flip case): normalise, then overwrite the erased box with its noise."""
    b, h, w, _ = images.shape
    for k in prange(b):
        for y in range(h):
            for x in range(w):
                for c in range(3):
                    v = (np.float32(images[k, y, x, c]) - mean[c]) * inv_std[c]
                    if channels_last:
                        out[k, y, x, c] = v
                    else:
                        out[k, c, y, x] = v
        e = erase[k]
        for y in range(e[HEIGHT]):
            base = e[OFFSET] + y * e[STRIDE_Y]
            for x in range(e[WIDTH]):
                for c in range(3):
                    v = noise[base + c * e[STRIDE_C] + x * e[STRIDE_X]]
                    if channels_last:
                        out[k, e[TOP] + y, e[LEFT] + x, c] = v
                    else:
                        out[k, c, e[TOP] + y, e[LEFT] + x] = v


def finish_on_host(
    images: np.ndarray,
    out: np.ndarray,
    mean: np.ndarray,
    inv_std: np.ndarray,
    channels_last: bool,
    erase: np.ndarray | None,
    noise: np.ndarray | None,
    mix: MixParams,
) -> None:
    """`finish_batch` with defaults for "no erasing" / "no mixing"."""
    if erase is None:
        erase, noise = np.zeros((images.shape[0], 8), np.int64), np.zeros(1, np.float32)
    if mix.lam == 1.0:
        normalize_erase(images, out, mean, inv_std, channels_last, erase, noise)
        return
    cutmix = mix.use_cutmix and mix.box is not None
    box = np.asarray(mix.box if cutmix else (0, 0, 0, 0), np.int64)
    finish_batch(
        images,
        out,
        mean,
        inv_std,
        channels_last,
        erase,
        noise,
        cutmix,
        np.float32(mix.lam),
        np.float32(1.0 - mix.lam),
        box,
    )
