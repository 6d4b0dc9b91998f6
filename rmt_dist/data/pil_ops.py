"""timm's RandAugment image ops re-implemented as numba kernels on (H, W, 3) uint8 arrays.

Each function reproduces the Pillow operation timm calls (Pillow's C code: LUT ops,
ImageEnhance blends, the SMOOTH filter, affine transforms with bilinear/bicubic filters and
a fill colour), so results equal timm's within a grey level or two. They run inside the
loader's numba worker threads, without the GIL, on images already cropped to the
training size. All functions modify `img` in place.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_JIT = dict(cache=True, nogil=True, fastmath=False)


@njit(**_JIT)
def apply_lut(img, lut):  # lut: (3, 256) uint8, one table per channel
    h, w, _ = img.shape
    for y in range(h):
        for x in range(w):
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
def auto_contrast(img):
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
    apply_lut(img, lut)


@njit(**_JIT)
def equalize(img):
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
    apply_lut(img, lut)


@njit(**_JIT)
def point(img, kind, arg):
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
    apply_lut(img, lut)


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
def color(img, factor):
    h, w, _ = img.shape
    for y in range(h):
        for x in range(w):
            lum = grey(img[y, x, 0], img[y, x, 1], img[y, x, 2])
            for c in range(3):
                img[y, x, c] = _blend_pixel(lum, img[y, x, c], factor)


@njit(**_JIT)
def contrast(img, factor):
    h, w, _ = img.shape
    total = 0
    for y in range(h):
        for x in range(w):
            total += grey(img[y, x, 0], img[y, x, 1], img[y, x, 2])
    mean = int(total / (h * w) + 0.5)
    for y in range(h):
        for x in range(w):
            for c in range(3):
                img[y, x, c] = _blend_pixel(mean, img[y, x, c], factor)


@njit(**_JIT)
def brightness(img, factor):
    h, w, _ = img.shape
    for y in range(h):
        for x in range(w):
            for c in range(3):
                img[y, x, c] = _blend_pixel(0, img[y, x, c], factor)


@njit(**_JIT)
def sharpness(img, factor):
    """Blend with ImageFilter.SMOOTH (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, /13; border kept)."""
    h, w, _ = img.shape
    smooth = img.copy()
    for y in range(1, h - 1):
        for x in range(1, w - 1):
            for c in range(3):
                s = np.float32(0.0)
                for dy in range(-1, 2):
                    for dx in range(-1, 2):
                        k = np.float32(5.0) if dy == 0 and dx == 0 else np.float32(1.0)
                        s += k * np.float32(img[y + dy, x + dx, c])
                s = s / np.float32(13.0) + np.float32(0.5)
                smooth[y, x, c] = min(max(int(s), 0), 255)
    for y in range(h):
        for x in range(w):
            for c in range(3):
                img[y, x, c] = _blend_pixel(smooth[y, x, c], img[y, x, c], factor)


@njit(**_JIT)
def _cubic(v1, v2, v3, v4, d):
    p1 = v2
    p2 = -v1 + v3
    p3 = 2.0 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return p1 + d * (p2 + d * (p3 + d * p4))


@njit(**_JIT)
def affine(img, a, b, c, d, e, f, fill, bicubic):
    """Pillow's Image.transform(AFFINE, (a..f), resample, fillcolor): output pixel (x, y)
    samples the input at (a(x+.5)+b(y+.5)+c, d(x+.5)+e(y+.5)+f); outside -> fill."""
    h, w, _ = img.shape
    src = img.copy()
    for y in range(h):
        for x in range(w):
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
                xs = (min(max(x0, 0), w - 1), min(max(x0 + 1, 0), w - 1),
                      min(max(x0 + 2, 0), w - 1), min(max(x0 + 3, 0), w - 1))
                for ch in range(3):
                    r = min(max(y0, 0), h - 1)
                    v1 = _cubic(float(src[r, xs[0], ch]), float(src[r, xs[1], ch]), float(src[r, xs[2], ch]),
                                float(src[r, xs[3], ch]), dx)
                    v2 = v1
                    if 0 <= y0 + 1 < h:
                        r = y0 + 1
                        v2 = _cubic(float(src[r, xs[0], ch]), float(src[r, xs[1], ch]), float(src[r, xs[2], ch]),
                                    float(src[r, xs[3], ch]), dx)
                    v3 = v2
                    if 0 <= y0 + 2 < h:
                        r = y0 + 2
                        v3 = _cubic(float(src[r, xs[0], ch]), float(src[r, xs[1], ch]), float(src[r, xs[2], ch]),
                                    float(src[r, xs[3], ch]), dx)
                    v4 = v3
                    if 0 <= y0 + 3 < h:
                        r = y0 + 3
                        v4 = _cubic(float(src[r, xs[0], ch]), float(src[r, xs[1], ch]), float(src[r, xs[2], ch]),
                                    float(src[r, xs[3], ch]), dx)
                    v = _cubic(v1, v2, v3, v4, dy)
                    img[y, x, ch] = 0 if v <= 0.0 else (255 if v >= 255.0 else int(v))
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
def rotate(img, degrees, fill, bicubic):
    """Pillow's Image.rotate(degrees, resample, fillcolor) about the centre, same size."""
    h, w, _ = img.shape
    angle = -math.radians(degrees % 360.0)
    a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
    d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
    cx, cy = w / 2.0, h / 2.0
    c = a * -cx + b * -cy + cx
    f = d * -cx + e * -cy + cy
    affine(img, a, b, c, d, e, f, fill, bicubic)
