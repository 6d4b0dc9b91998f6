"""timm's RandAugment image ops re-implemented as numba kernels on (H, W, 3) uint8 arrays.

Each function reproduces the Pillow operation timm calls (Pillow's C code: LUT ops,
ImageEnhance blends, the SMOOTH filter, affine transforms with bilinear/bicubic filters and
a fill colour); the tests find them equal to timm's bit for bit. They run inside the
loader's numba worker threads, without the GIL: on the 224 px crops (crop_first order) or
on whole stored images (tlt order). All functions modify `img` in place; each takes an
optional window (y0, y1, x0, x1) and then guarantees only those pixels (statistics still
come from the whole image), so the tlt order computes only what its crop will show. The
blends are written branch-free over flat rows so LLVM vectorises them (same float32
arithmetic as Pillow's ImagingBlend).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

_JIT: dict[str, Any] = dict(cache=True, nogil=True, fastmath=False)


@njit(**_JIT)
def apply_lut(img, lut, y0=0, y1=-1, x0=0, x1=-1):  # lut: (3, 256) uint8, one table per channel
    """In place over rows [y0, y1) and columns [x0, x1) (-1: to the end)."""
    h, w, _ = img.shape
    y1 = h if y1 < 0 else y1
    x1 = w if x1 < 0 else x1
    for y in range(y0, y1):
        for x in range(x0, x1):
            for c in range(3):
                img[y, x, c] = lut[c, img[y, x, c]]


@njit(**_JIT)
def histograms(img):
    hist = np.zeros((3, 256), np.int64)
    h, w, _ = img.shape
    for y in range(h):
        for x in range(w):
            for c in range(3):
                hist[c, img[y, x, c]] += 1
    return hist


@njit(**_JIT)
def auto_contrast(img, y0=0, y1=-1, x0=0, x1=-1):
    """The LUT from the whole image's histograms, applied to the window (all ops: see apply_lut)."""
    hist = histograms(img)
    lut = np.empty((3, 256), np.uint8)
    for c in range(3):
        lo = 0
        while lo < 255 and hist[c, lo] == 0:
            lo += 1
        hi = 255
        while hi > 0 and hist[c, hi] == 0:
            hi -= 1
        if hi <= lo:
            for i in range(256):
                lut[c, i] = i
        else:
            scale = 255.0 / (hi - lo)
            offset = -lo * scale
            for i in range(256):
                v = int(i * scale + offset)
                lut[c, i] = min(max(v, 0), 255)
    apply_lut(img, lut, y0, y1, x0, x1)


@njit(**_JIT)
def equalize(img, y0=0, y1=-1, x0=0, x1=-1):
    hist = histograms(img)
    lut = np.empty((3, 256), np.uint8)
    for c in range(3):
        total = 0
        last = 0
        nonzero = 0
        for i in range(256):
            if hist[c, i]:
                total += hist[c, i]
                last = hist[c, i]
                nonzero += 1
        step = (total - last) // 255 if nonzero > 1 else 0
        if step == 0:
            for i in range(256):
                lut[c, i] = i
        else:
            n = step // 2
            for i in range(256):
                lut[c, i] = min(n // step, 255)
                n += hist[c, i]
    apply_lut(img, lut, y0, y1, x0, x1)


@njit(**_JIT)
def point(img, kind, arg, y0=0, y1=-1, x0=0, x1=-1):
    """LUT ops: 0 invert, 1 posterize(bits), 2 solarize(thresh), 3 solarize_add(add, thresh 128)."""
    lut = np.empty((3, 256), np.uint8)
    a = int(arg)
    for i in range(256):
        if kind == 0:
            v = 255 - i
        elif kind == 1:
            v = i if a >= 8 else i & (~((1 << (8 - a)) - 1) & 0xFF)
        elif kind == 2:
            v = i if i < a else 255 - i
        else:
            v = min(255, i + a) if i < 128 else i
        for c in range(3):
            lut[c, i] = v
    apply_lut(img, lut, y0, y1, x0, x1)


@njit(**_JIT)
def _blend_pixel(degenerate, value, factor):
    # Pillow's ImagingBlend: float32 math, truncation, clipping only when extrapolating.
    v = np.float32(degenerate) + np.float32(factor) * np.float32(np.int32(value) - np.int32(degenerate))
    if v <= 0.0:
        return 0
    if v >= 255.0:
        return 255
    return int(v)


@njit(**_JIT)
def grey(r, g, b):  # Pillow's RGB -> L (ITU-R 601-2 luma, 16-bit fixed point)
    return (np.int32(r) * 19595 + np.int32(g) * 38470 + np.int32(b) * 7471 + 0x8000) >> 16


@njit(**_JIT)
def _blend(img, degenerate, factor, lo, hi):
    """img[i] = _blend_pixel(degenerate[i - lo], img[i], factor) for i in [lo, hi) of flat uint8
    arrays, in place, written branch-free (clamp, then truncate: the same result) so LLVM
    vectorises it."""
    f = np.float32(factor)
    zero, top = np.float32(0.0), np.float32(255.0)
    for i in range(lo, hi):
        dg = np.float32(degenerate[i - lo])
        v = dg + f * (np.float32(img[i]) - dg)
        img[i] = np.uint8(min(max(v, zero), top))


@njit(**_JIT)
def _window(img, y0, y1, x0, x1):
    h, w, _ = img.shape
    return y0, (h if y1 < 0 else y1), x0, (w if x1 < 0 else x1)


@njit(**_JIT)
def color(img, factor, y0=0, y1=-1, x0=0, x1=-1):
    h, w, _ = img.shape
    y0, y1, x0, x1 = _window(img, y0, y1, x0, x1)
    flat = img.reshape(img.size)
    grey3 = np.empty((x1 - x0) * 3, np.uint8)
    for y in range(y0, y1):
        base = (y * w + x0) * 3
        for p in range(x1 - x0):
            g = grey(flat[base + 3 * p], flat[base + 3 * p + 1], flat[base + 3 * p + 2])
            grey3[3 * p] = g
            grey3[3 * p + 1] = g
            grey3[3 * p + 2] = g
        _blend(flat, grey3, factor, base, base + (x1 - x0) * 3)


@njit(**_JIT)
def contrast(img, factor, y0=0, y1=-1, x0=0, x1=-1):
    """Blend with the whole image's mean grey, in the window."""
    h, w, _ = img.shape
    y0, y1, x0, x1 = _window(img, y0, y1, x0, x1)
    total = 0
    flat = img.reshape(img.size)
    for p in range(h * w):
        total += grey(flat[3 * p], flat[3 * p + 1], flat[3 * p + 2])
    mean = int(total / (h * w) + 0.5)
    deg = np.full((x1 - x0) * 3, mean, np.uint8)
    for y in range(y0, y1):
        base = (y * w + x0) * 3
        _blend(flat, deg, factor, base, base + (x1 - x0) * 3)


@njit(**_JIT)
def brightness(img, factor, y0=0, y1=-1, x0=0, x1=-1):
    h, w, _ = img.shape
    y0, y1, x0, x1 = _window(img, y0, y1, x0, x1)
    flat = img.reshape(img.size)
    deg = np.zeros((x1 - x0) * 3, np.uint8)
    for y in range(y0, y1):
        base = (y * w + x0) * 3
        _blend(flat, deg, factor, base, base + (x1 - x0) * 3)


@njit(**_JIT)
def sharpness(img, factor, y0=0, y1=-1, x0=0, x1=-1):
    """Blend with ImageFilter.SMOOTH (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, /13; border kept), in
    the window; the filter reads the unmodified neighbours, also outside the window."""
    h, w, _ = img.shape
    y0, y1, x0, x1 = _window(img, y0, y1, x0, x1)
    n = (x1 - x0) * 3
    smooth = np.empty((max(y1 - y0, 0), n), np.uint8)
    one, five, thirteen, half = np.float32(1.0), np.float32(5.0), np.float32(13.0), np.float32(0.5)
    w3 = w * 3
    for y in range(y0, y1):
        mid = img[y].reshape(w3)
        out = smooth[y - y0]
        for i in range(n):
            out[i] = mid[x0 * 3 + i]  # Pillow keeps the image border unfiltered
        if y == 0 or y == h - 1:
            continue
        up, down = img[y - 1].reshape(w3), img[y + 1].reshape(w3)
        lo, hi = max(x0, 1) * 3, min(x1, w - 1) * 3
        for i in range(lo, hi):  # interior pixels of row y, all channels; the taps in Pillow's order
            t = np.float32(0.0)
            t += one * np.float32(up[i - 3])
            t += one * np.float32(up[i])
            t += one * np.float32(up[i + 3])
            t += one * np.float32(mid[i - 3])
            t += five * np.float32(mid[i])
            t += one * np.float32(mid[i + 3])
            t += one * np.float32(down[i - 3])
            t += one * np.float32(down[i])
            t += one * np.float32(down[i + 3])
            t = t / thirteen + half
            out[i - x0 * 3] = np.uint8(min(max(t, np.float32(0.0)), np.float32(255.0)))
    flat = img.reshape(img.size)
    for y in range(y0, y1):
        base = (y * w + x0) * 3
        _blend(flat, smooth[y - y0], factor, base, base + n)


@njit(**_JIT)
def _cubic(v1, v2, v3, v4, d):
    p1 = v2
    p2 = -v1 + v3
    p3 = 2.0 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return p1 + d * (p2 + d * (p3 + d * p4))


@njit(**_JIT)
def _clip8(v):
    return 0 if v <= 0.0 else (255 if v >= 255.0 else int(v))


@njit(**_JIT)
def _row(src, r, xs, ch, dx):
    """Pillow's horizontal bicubic pass over row r; at dx = 0 it returns the centre tap
    exactly (p1 + 0 * ...), so the arithmetic is skipped (shear/translate along y)."""
    if dx == 0.0:
        return float(src[r, xs[1], ch])
    return _cubic(
        float(src[r, xs[0], ch]),
        float(src[r, xs[1], ch]),
        float(src[r, xs[2], ch]),
        float(src[r, xs[3], ch]),
        dx,
    )


@njit(**_JIT)
def affine(img, a, b, c, d, e, f, fill, bicubic, y0=0, y1=-1, x0=0, x1=-1):
    """Pillow's Image.transform(AFFINE, (a..f), resample, fillcolor): output pixel (x, y)
    samples the input at (a(x+.5)+b(y+.5)+c, d(x+.5)+e(y+.5)+f); outside -> fill. Computes
    at least the window [y0, y1) x [x0, x1); pixels outside it may be left stale."""
    y0, y1, x0, x1 = _window(img, y0, y1, x0, x1)
    src = img.copy()
    if bicubic and a == 1.0 and d == 0.0 and e == 1.0 and f == 0.0:  # ShearX, TranslateX
        for y in range(y0, y1):
            _shift_row(img, src, y, b, c, fill)
        return
    if bicubic and a == 1.0 and b == 0.0 and c == 0.0 and e == 1.0:  # ShearY, TranslateY
        # The same as ShearX/TranslateX on the transposed image (Pillow's vertical taps clamp
        # at the border like its horizontal ones, and the sums are the same).
        t_src = _transposed(src)
        t_img = t_src.copy()
        for x in range(x0, x1):
            _shift_row(t_img, t_src, x, d, f, fill)
        for y in range(y0, y1):
            for x in range(x0, x1):
                for ch in range(3):
                    img[y, x, ch] = t_img[x, y, ch]
        return
    _general(img, src, a, b, c, d, e, f, fill, bicubic, y0, y1, x0, x1)


@njit(**_JIT)
def _general(img, src, a, b, c, d, e, f, fill, bicubic, y_lo, y_hi, x_lo, x_hi):
    """The per-pixel transform over rows [y_lo, y_hi) and columns [x_lo, x_hi)."""
    h, w, _ = img.shape
    for y in range(y_lo, y_hi):
        for x in range(x_lo, x_hi):
            xin = a * (x + 0.5) + b * (y + 0.5) + c
            yin = d * (x + 0.5) + e * (y + 0.5) + f
            if xin < 0.0 or xin >= w or yin < 0.0 or yin >= h:
                for ch in range(3):
                    img[y, x, ch] = fill[ch]
                continue
            xin -= 0.5
            yin -= 0.5
            x0 = math.floor(xin)
            y0 = math.floor(yin)
            dx = xin - x0
            dy = yin - y0
            if bicubic:
                x0 -= 1
                y0 -= 1
                xs = (
                    min(max(x0, 0), w - 1),
                    min(max(x0 + 1, 0), w - 1),
                    min(max(x0 + 2, 0), w - 1),
                    min(max(x0 + 3, 0), w - 1),
                )
                if dy == 0.0:
                    # Pillow's vertical pass returns v2 exactly at d = 0 (p1 + 0 * ...), and
                    # row y0 + 1 is in range here: skip the other three rows.
                    for ch in range(3):
                        img[y, x, ch] = _clip8(_row(src, y0 + 1, xs, ch, dx))
                    continue
                r = min(max(y0, 0), h - 1)
                for ch in range(3):
                    v1 = _row(src, r, xs, ch, dx)
                    v2 = _row(src, y0 + 1, xs, ch, dx) if 0 <= y0 + 1 < h else v1
                    v3 = _row(src, y0 + 2, xs, ch, dx) if 0 <= y0 + 2 < h else v2
                    v4 = _row(src, y0 + 3, xs, ch, dx) if 0 <= y0 + 3 < h else v3
                    img[y, x, ch] = _clip8(_cubic(v1, v2, v3, v4, dy))
            else:
                xa = min(max(x0, 0), w - 1)
                xb = min(max(x0 + 1, 0), w - 1)
                ra = min(max(y0, 0), h - 1)
                for ch in range(3):
                    v1 = src[ra, xa, ch] + (float(src[ra, xb, ch]) - src[ra, xa, ch]) * dx
                    v2 = v1
                    if 0 <= y0 + 1 < h:
                        rb = y0 + 1
                        v2 = src[rb, xa, ch] + (float(src[rb, xb, ch]) - src[rb, xa, ch]) * dx
                    v = v1 + (v2 - v1) * dy
                    img[y, x, ch] = 0 if v <= 0.0 else (255 if v >= 255.0 else int(v))


@njit(**_JIT)
def _transposed(img):
    h, w, _ = img.shape
    t = np.empty((w, h, 3), np.uint8)
    for y in range(h):
        for x in range(w):
            for ch in range(3):
                t[x, y, ch] = img[y, x, ch]
    return t


@njit(**_JIT)
def _shift_row(img, src, y, b, c, fill):
    """Bicubic row y of an x-shift: output x samples the row at (x + 0.5) + b(y + 0.5) + c.

    The fractional shift is the same for the whole row, so the interior runs as one vector
    loop with one dx. The general path computes dx per pixel, which can differ from the
    row's in the last bits. Where it does, a result changes only if it lies within ~1e-10 of
    an integer (its truncation may flip): those are recomputed the general way, so the row
    stays identical to the general path (and to Pillow)."""
    w = img.shape[1]
    by = b * (y + 0.5)
    t = by + c
    k = math.floor(t)
    dx = t - k
    k = int(k)
    lo = min(max(2 - k, 0), w)  # interior: taps x+k-1 .. x+k+2 inside, with one pixel to spare
    hi = max(min(w - 3 - k, w), lo)
    exact = True  # does every interior pixel's own dx equal the row's?
    for x in range(lo, hi):
        xm = ((x + 0.5) + by + c) - 0.5
        fx = math.floor(xm)
        exact &= (xm - fx == dx) & (fx == x + k)
    if not exact and (dx < 1e-6 or dx > 1.0 - 1e-6):  # the tap choice itself may vary
        lo = hi = 0
    _general(img, src, 1.0, b, c, 0.0, 1.0, 0.0, fill, True, y, y + 1, 0, lo)  # the borders
    _general(img, src, 1.0, b, c, 0.0, 1.0, 0.0, fill, True, y, y + 1, hi, w)
    row = src[y].reshape(w * 3)
    out = img[y].reshape(w * 3)
    s = (k - 1) * 3
    for i in range(lo * 3, hi * 3):  # branch-free, so LLVM vectorises it
        v = _cubic(float(row[i + s]), float(row[i + s + 3]), float(row[i + s + 6]), float(row[i + s + 9]), dx)
        out[i] = np.uint8(min(max(v, 0.0), 255.0))  # = Pillow's clip, then truncation
    if not exact:
        for x in range(lo, hi):
            for ch in range(3):
                i = x * 3 + ch
                v = _cubic(
                    float(row[i + s]), float(row[i + s + 3]), float(row[i + s + 6]), float(row[i + s + 9]), dx
                )
                if abs(v - math.floor(v + 0.5)) < 1e-8:
                    _general(img, src, 1.0, b, c, 0.0, 1.0, 0.0, fill, True, y, y + 1, x, x + 1)
                    break


@njit(**_JIT)
def _split(a):  # Dekker: a = hi + lo, each with at most 26 significant bits
    c = 134217729.0 * a  # 2**27 + 1
    hi = c - (c - a)
    return hi, a - hi


@njit(**_JIT)
def round15(x):
    """Python's round(x, 15) for |x| <= 1 (numba's own differs in the last bit for ~9% of
    angles): the exact x * 1e15 (product + Dekker's error term) rounded half-to-even to an
    integer r < 2**53, then r / 1e15, a correctly rounded division of the decimal value."""
    p = x * 1e15
    xh, xl = _split(x)
    th, tl = _split(1e15)
    err = ((xh * th - p) + xh * tl + xl * th) + xl * tl  # x * 1e15 == p + err exactly
    r = float(np.rint(p))
    if abs(p - math.floor(p) - 0.5) == 0.0 and err != 0.0:  # a tie in p only: err decides
        r = math.floor(p) + (1.0 if err > 0.0 else 0.0)
    return r / 1e15


@njit(**_JIT)
def rotation_matrix(degrees, w, h):
    """Image.rotate's inverse map (a, b, c, d, e, f), no expand, about the centre, in
    Pillow's own arithmetic (also used by the device path)."""
    angle = -math.radians(degrees % 360.0)
    a, b = round15(math.cos(angle)), round15(math.sin(angle))
    d, e = round15(-math.sin(angle)), round15(math.cos(angle))
    cx, cy = w / 2.0, h / 2.0
    return a, b, a * -cx + b * -cy + cx, d, e, d * -cx + e * -cy + cy


@njit(**_JIT)
def rotate(img, degrees, fill, bicubic, y0=0, y1=-1, x0=0, x1=-1):
    """Pillow's Image.rotate(degrees, resample, fillcolor) about the centre, same size."""
    h, w, _ = img.shape
    a, b, c, d, e, f = rotation_matrix(degrees, w, h)
    affine(img, a, b, c, d, e, f, fill, bicubic, y0, y1, x0, x1)
