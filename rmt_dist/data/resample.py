"""Pillow's antialiased resize (bicubic or bilinear) as a numba kernel, bit-exact.

timm's training crop is `img.crop(box).resize((224, 224), BICUBIC)` and its eval transform
`Resize(floor(224 / crop_pct), BICUBIC)` + `CenterCrop(224)`, both with Pillow. This
reproduces Pillow 13's `ImagingResample` exactly: the same filter taps and normalisation,
22-bit fixed-point coefficients, uint8 rounding between the two separable passes, and the
same pass order (vertical first when the height shrinks more than twice as much as the
width, horizontal first otherwise), so a decoded crop equals the reference pixel for pixel.

Speed: each pass is run as a sum of whole rows times one coefficient (contiguous, SIMD
friendly); the horizontal pass transposes its input first. A 273 px crop to 224 px takes
~0.2 ms on one core, half of OpenCV's INTER_AREA and a quarter of Pillow.

`resize_window` computes only a window of the resized image: the same values a full resize
followed by an integer crop would give (every output pixel depends only on its own taps).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

PRECISION_BITS = 32 - 8 - 2  # Pillow's: 8 bits of result, 2 for overshoot
BICUBIC, BILINEAR = 0, 1
FILTERS = {"bicubic": BICUBIC, "bilinear": BILINEAR}
_JIT: dict[str, Any] = dict(cache=True, nogil=True)


@njit(**_JIT)
def _filter(x, kind):
    x = abs(x)
    if kind == BICUBIC:
        a = -0.5
        if x < 1.0:
            return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
        if x < 2.0:
            return (((x - 5) * x + 8) * x - 4) * a
        return 0.0
    return 1.0 - x if x < 1.0 else 0.0


@njit(**_JIT)
def coefficients(in_size, out_size, kind):
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc for resizing [0, in_size) to
    out_size: (bounds (out, 2): first tap and tap count, int32 fixed-point taps (out, ksize))."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = (2.0 if kind == BICUBIC else 1.0) * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    bounds = np.zeros((out_size, 2), np.int64)
    taps = np.zeros((out_size, ksize), np.int32)
    weights = np.zeros(ksize)
    inv = 1.0 / filterscale
    for o in range(out_size):
        center = (o + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        n = min(int(center + support + 0.5), in_size) - lo
        total = 0.0
        for t in range(n):
            weights[t] = _filter((t + lo - center + 0.5) * inv, kind)
            total += weights[t]
        for t in range(n):
            v = weights[t] / total if total != 0.0 else weights[t]
            taps[o, t] = (
                int(-0.5 + v * (1 << PRECISION_BITS)) if v < 0 else int(0.5 + v * (1 << PRECISION_BITS))
            )
        bounds[o, 0] = lo
        bounds[o, 1] = n
    return bounds, taps


@njit(**_JIT)
def _pass(src, offset, bounds, taps, dst, acc):
    """dst[o] = clip8(sum_t src[offset + bounds[o, 0] + t] * taps[o, t]), whole rows at a time."""
    half = np.int32(1 << (PRECISION_BITS - 1))
    m = src.shape[1]
    for o in range(dst.shape[0]):
        acc[:m] = half
        first = offset + bounds[o, 0]
        for t in range(bounds[o, 1]):
            k = taps[o, t]
            row = src[first + t]
            for i in range(m):
                acc[i] += np.int32(row[i]) * k
        out = dst[o]
        for i in range(m):
            v = acc[i] >> PRECISION_BITS
            out[i] = 0 if v < 0 else (255 if v > 255 else v)


@njit(**_JIT)
def resize_window(src, top, left, height, width, full_h, full_w, win_top, win_left, dst, flip, kind):
    """dst (h, w, 3) <- rows [win_top, +h) and columns [win_left, +w) of Pillow's resize of
    the crop src[top:top+height, left:left+width] to (full_h, full_w); mirrored if `flip`."""
    oh, ow, _ = dst.shape
    vb, vk = coefficients(height, full_h, kind)
    hb, hk = coefficients(width, full_w, kind)
    vb, vk = vb[win_top : win_top + oh], vk[win_top : win_top + oh]
    hb, hk = hb[win_left : win_left + ow], hk[win_left : win_left + ow]
    flat = src.reshape((src.shape[0], src.shape[1] * 3))
    crop = flat[top : top + height, left * 3 : (left + width) * 3]
    acc = np.empty(max(width, ow, oh, height) * 3, np.int32)
    # Pillow 13's ImagingResampleInner: vertical first if the height shrinks > 2x the width.
    if (height - full_h) > 0 and (height - full_h) > (width - full_w) * 2:
        rows = np.empty((oh, width * 3), np.uint8)
        _pass(crop, 0, vb, vk, rows, acc)
        out = np.empty((oh, ow * 3), np.uint8)
        _horizontal_rows(rows, hb, hk, out, acc)
        _store(out, dst, flip)
    else:
        first = vb[0, 0]
        last = vb[oh - 1, 0] + vb[oh - 1, 1]
        rows = np.empty((last - first, ow * 3), np.uint8)
        _horizontal_rows(crop[first:last], hb, hk, rows, acc)
        out = np.empty((oh, ow * 3), np.uint8)
        _pass(rows, -first, vb, vk, out, acc)
        _store(out, dst, flip)


@njit(**_JIT)
def _transpose_pixels(rows, t):
    """t (W, R*3) <- rows (R, W*3): columns become rows, so a horizontal pass runs over rows."""
    r, w3 = rows.shape
    for y in range(r):
        for x in range(w3 // 3):
            for c in range(3):
                t[x, y * 3 + c] = rows[y, x * 3 + c]


@njit(**_JIT)
def _horizontal_rows(rows, hb, hk, out, acc):
    """out (R, ow*3) <- horizontal pass over rows (R, W*3)."""
    t = np.empty((rows.shape[1] // 3, rows.shape[0] * 3), np.uint8)
    _transpose_pixels(rows, t)
    ht = np.empty((hb.shape[0], rows.shape[0] * 3), np.uint8)
    _pass(t, 0, hb, hk, ht, acc)
    _transpose_pixels(ht, out)


@njit(**_JIT)
def _store(out, dst, flip):
    oh, ow, _ = dst.shape
    for y in range(oh):
        for x in range(ow):
            xo = ow - 1 - x if flip else x
            for c in range(3):
                dst[y, xo, c] = out[y, x * 3 + c]
