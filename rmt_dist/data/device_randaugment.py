"""RandAugment batched as torch ops on the training device, bit-exact with `pil_ops` (and so
with Pillow, which timm calls).

On a GPU node the host CPUs are the loader's bottleneck: the paper's RandAugment costs
about as much CPU time per image as the JPEG decode itself. Run here, the host does only
decode + crop + flip, and the device applies each layer of the batch's RandAugment in
three groups, whatever the op mix:

- LUT ops (AutoContrast, Equalize, Invert, Posterize, Solarize, SolarizeAdd): a per-image,
  per-channel 256-entry table, one gather;
- blends (Color, Contrast, Brightness, Sharpness): Pillow's ImageEnhance, a per-image
  degenerate image and factor, one blend;
- affine ops (Rotate, ShearX/Y, TranslateX/Y): Pillow's generic transform, per-image
  coefficients, 4x4 bicubic (or 2x2 bilinear) taps with clamped edges, mean-pixel fill.

Exactness: each step is the IEEE operation Pillow's C code performs (float64 for the
transform, float32 blends, integer tables) as separate elementwise kernels, so nothing is
fused or reassociated. Two torch shortcuts that are *not* exact are avoided on purpose:
`scalar / tensor` (torch computes reciprocal * scalar) and `tensor / python_scalar` on
CUDA (multiplies by the reciprocal); divisions go tensor by tensor.

    images = rand_augment_on_device(images_uint8_nhwc, ops, args, fill, bicubic=True)

`ops`/`args` are `randaugment.sample_ops`'s arrays, so host and device placement draw the
same augmentation from the same seed (the loader's `data.randaugment_on`).
"""

from __future__ import annotations

import numpy as np
import torch

from . import pil_ops
from .randaugment import (
    AUTO_CONTRAST,
    BRIGHTNESS,
    COLOR,
    CONTRAST,
    EQUALIZE,
    INVERT,
    POSTERIZE,
    ROTATE,
    SHARPNESS,
    SHEAR_X,
    SHEAR_Y,
    SOLARIZE,
    SOLARIZE_ADD,
    TRANSLATE_X,
    TRANSLATE_Y,
)

LUT_OPS = (AUTO_CONTRAST, EQUALIZE, INVERT, POSTERIZE, SOLARIZE, SOLARIZE_ADD)
BLEND_OPS = (COLOR, CONTRAST, BRIGHTNESS, SHARPNESS)
AFFINE_OPS = (ROTATE, SHEAR_X, SHEAR_Y, TRANSLATE_X, TRANSLATE_Y)
# Pixels per affine pass (16 images at 224 px): bounds the float64 temporaries, ~20 MB
# each and ~16 alive at the peak, whatever the image size.
AFFINE_CHUNK_PIXELS = 16 * 224 * 224


def rand_augment_on_device(
    images: torch.Tensor, ops: np.ndarray, args: np.ndarray, fill: np.ndarray, bicubic: bool = True
) -> torch.Tensor:
    """Apply each image's RandAugment layers in place. images: uint8 (B, H, W, 3), any device;
    ops, args: (B, layers) from `sample_ops` (NO_OP where a layer is skipped)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 (B, H, W, 3) images, got {images.dtype} {tuple(images.shape)}")
    for layer in range(ops.shape[1]):
        op, arg = ops[:, layer], args[:, layer]
        for group, apply in ((LUT_OPS, _lut_ops), (BLEND_OPS, _blend_ops), (AFFINE_OPS, _affine_ops)):
            sel = np.flatnonzero(np.isin(op, group))
            if len(sel) == 0:
                continue
            idx = _upload(sel, images.device)
            images[idx] = apply(images[idx], op[sel], arg[sel], fill, bicubic)
    return images


def _upload(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """A small host array on the device without a stream sync: a blocking copy waits for all
    queued GPU work (stalling the training loop once per call), and CUDA may do the same
    for an async copy from pageable memory, so it goes through pinned memory (torch's
    caching host allocator keeps the block until the copy is done)."""
    t = torch.from_numpy(np.ascontiguousarray(values))
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _per_image(values: np.ndarray, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A per-image host array as a (n, 1, 1, 1) device tensor."""
    return _upload(values, x.device).to(dtype).view(-1, 1, 1, 1)


def _const(value: float, like: torch.Tensor) -> torch.Tensor:
    """A 0-dim device tensor (filled on the device, no copy): dividing by it is a true IEEE
    division on every backend."""
    return torch.full((), value, dtype=like.dtype, device=like.device)


# --- LUT ops ---------------------------------------------------------------------------


def _lut_ops(
    x: torch.Tensor, op: np.ndarray, arg: np.ndarray, fill: np.ndarray, bicubic: bool
) -> torch.Tensor:
    n = x.shape[0]
    i = torch.arange(256, device=x.device, dtype=torch.int64).view(1, 1, 256)
    a = _upload(np.trunc(arg).astype(np.int64), x.device).view(n, 1, 1)  # pil_ops: int(arg)
    code = _upload(op.astype(np.int64), x.device).view(n, 1, 1)
    lut = i.expand(n, 3, 256)
    lut = torch.where(code == INVERT, 255 - i, lut)
    mask = ~((1 << (8 - a).clamp(min=0)) - 1) & 0xFF
    lut = torch.where((code == POSTERIZE) & (a < 8), i & mask, lut)
    lut = torch.where(code == SOLARIZE, torch.where(i < a, i, 255 - i), lut)
    lut = torch.where(code == SOLARIZE_ADD, torch.where(i < 128, (i + a).clamp(max=255), i), lut)
    for want, table in ((AUTO_CONTRAST, _auto_contrast_luts), (EQUALIZE, _equalize_luts)):
        sel = np.flatnonzero(op == want)
        if len(sel):
            idx = _upload(sel, x.device)
            lut[idx] = table(x[idx])
    # out[b, y, x, c] = lut[b, c, x[b, y, x, c]]: one gather over a flat (n * 3 * 256) table.
    base = (
        torch.arange(n, device=x.device).view(n, 1, 1, 1) * 768
        + torch.arange(3, device=x.device).view(1, 1, 1, 3) * 256
    )
    return lut.to(torch.uint8).reshape(-1)[base + x.long()]


def _auto_contrast_luts(x: torch.Tensor) -> torch.Tensor:
    """ImageOps.autocontrast(cutoff=0): stretch each channel's [min, max] to [0, 255]."""
    lo = x.amin(dim=(1, 2)).double().unsqueeze(-1)  # (n, 3, 1)
    hi = x.amax(dim=(1, 2)).double().unsqueeze(-1)
    i = torch.arange(256, device=x.device, dtype=torch.float64).view(1, 1, 256)
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    scale = torch.div(torch.full_like(span, 255.0), span)
    offset = -lo * scale
    v = torch.trunc(i * scale + offset).clamp(0, 255)  # Python's int(): truncation
    return torch.where(hi > lo, v, i.expand_as(v)).long()


def _equalize_luts(x: torch.Tensor) -> torch.Tensor:
    """ImageOps.equalize: Pillow's cumulative-histogram table per channel."""
    n = x.shape[0]
    flat = (
        x.long()
        + torch.arange(3, device=x.device).view(1, 1, 1, 3) * 256
        + torch.arange(n, device=x.device).view(n, 1, 1, 1) * 768
    )
    # scatter_add_, not bincount: CUDA's bincount reads min/max back to the host (two syncs).
    hist = torch.zeros(n * 768, dtype=torch.int64, device=x.device)
    hist = hist.scatter_add_(0, flat.reshape(-1), torch.ones_like(flat).reshape(-1)).view(n, 3, 256)
    nonzero = hist > 0
    last_bin = 255 - nonzero.flip(-1).long().argmax(-1, keepdim=True)  # the last non-empty bin
    last = hist.gather(-1, last_bin)
    total = hist.sum(-1, keepdim=True)
    step = torch.where(nonzero.sum(-1, keepdim=True) > 1, (total - last) // 255, torch.zeros_like(total))
    before = torch.cumsum(hist, -1) - hist  # pixels in the bins below each bin
    table = ((step // 2 + before) // step.clamp(min=1)).clamp(max=255)
    i = torch.arange(256, device=x.device).view(1, 1, 256)
    return torch.where(step > 0, table, i.expand_as(table))


# --- blends (ImageEnhance) -------------------------------------------------------------


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB -> L (ITU-R 601-2, 16-bit fixed point), (n, H, W, 1) int32."""
    c = x.int()
    return (c[..., 0:1] * 19595 + c[..., 1:2] * 38470 + c[..., 2:3] * 7471 + 0x8000) >> 16


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """ImageFilter.SMOOTH (1 1 1 / 1 5 1 / 1 1 1, /13), border pixels kept. The integer sums
    are exact in float32, so only Pillow's division and rounding need care."""
    c = x.int()
    s = c[:, 1:-1, 1:-1] * 4
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            s = s + c[:, dy : dy + c.shape[1] - 2, dx : dx + c.shape[2] - 2]
    f = s.float()
    inner = torch.trunc(torch.div(f, _const(13.0, f)) + 0.5).clamp(0, 255).int()
    out = c.clone()
    out[:, 1:-1, 1:-1] = inner
    return out


def _blend_ops(
    x: torch.Tensor, op: np.ndarray, arg: np.ndarray, fill: np.ndarray, bicubic: bool
) -> torch.Tensor:
    """Image.blend(degenerate, image, factor) as ImagingBlend computes it: float32
    degenerate + factor * (image - degenerate), clipped, truncated."""
    code = _per_image(op.astype(np.int64), x, torch.int64)
    degenerate = torch.zeros_like(x, dtype=torch.int32)  # Brightness: black
    grey = _grey(x) if np.isin(op, (COLOR, CONTRAST)).any() else None
    if (op == COLOR).any():
        assert grey is not None
        degenerate = torch.where(code == COLOR, grey.expand_as(degenerate), degenerate)
    if (op == CONTRAST).any():
        assert grey is not None
        h, w = x.shape[1:3]
        total = grey.sum(dim=(1, 2, 3), keepdim=True, dtype=torch.int64).double()
        mean = torch.trunc(torch.div(total, _const(float(h * w), total)) + 0.5).int()  # int(mean + 0.5)
        degenerate = torch.where(code == CONTRAST, mean.expand_as(degenerate), degenerate)
    if (op == SHARPNESS).any():
        sel = np.flatnonzero(op == SHARPNESS)
        idx = _upload(sel, x.device)
        degenerate[idx] = _smooth(x[idx])
    factor = _per_image(arg, x, torch.float64).float()
    v = degenerate.float() + factor * (x.int() - degenerate).float()
    return v.clamp(0, 255).trunc().to(torch.uint8)


# --- affine ops (Image.transform AFFINE / Image.rotate) --------------------------------


def affine_coefficients(op: np.ndarray, arg: np.ndarray, h: int, w: int) -> np.ndarray:
    """(n, 6) inverse-map coefficients (a, b, c, d, e, f) of timm's affine ops."""
    m = np.zeros((len(op), 6))
    m[:, 0] = m[:, 4] = 1.0
    for k, (o, v) in enumerate(zip(op.tolist(), arg.tolist())):
        if o == ROTATE:
            m[k] = pil_ops.rotation_matrix(v, w, h)
        elif o == SHEAR_X:
            m[k, 1] = v
        elif o == SHEAR_Y:
            m[k, 3] = v
        elif o == TRANSLATE_X:
            m[k, 2] = v * w
        elif o == TRANSLATE_Y:
            m[k, 5] = v * h
    return m


def _affine_ops(
    x: torch.Tensor, op: np.ndarray, arg: np.ndarray, fill: np.ndarray, bicubic: bool
) -> torch.Tensor:
    coef = affine_coefficients(op, arg, x.shape[1], x.shape[2])
    chunk = max(1, AFFINE_CHUNK_PIXELS // (x.shape[1] * x.shape[2]))
    return torch.cat(
        [affine(x[k : k + chunk], coef[k : k + chunk], fill, bicubic) for k in range(0, x.shape[0], chunk)]
    )


def _cubic(
    v1: torch.Tensor, v2: torch.Tensor, v3: torch.Tensor, v4: torch.Tensor, d: torch.Tensor
) -> torch.Tensor:
    """Pillow's bicubic (a = -0.5) in its own evaluation order."""
    p2 = -v1 + v3
    p3 = 2.0 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return v2 + d * (p2 + d * (p3 + d * p4))


def affine(x: torch.Tensor, coef: np.ndarray, fill: np.ndarray, bicubic: bool) -> torch.Tensor:
    """Image.transform(size, AFFINE, coef, BICUBIC or BILINEAR, fillcolor=fill) per image:
    output (x, y) samples the input at (a(x+.5)+b(y+.5)+c, d(x+.5)+e(y+.5)+f)."""
    n, h, w, _ = x.shape
    dev = x.device
    a, b, c, d, e, f = (_upload(coef[:, k], dev).view(n, 1, 1) for k in range(6))
    xs = (torch.arange(w, device=dev, dtype=torch.float64) + 0.5).view(1, 1, w)
    ys = (torch.arange(h, device=dev, dtype=torch.float64) + 0.5).view(1, h, 1)
    xin = a * xs + b * ys + c
    yin = d * xs + e * ys + f
    outside = (xin < 0) | (xin >= w) | (yin < 0) | (yin >= h)
    xin, yin = xin - 0.5, yin - 0.5
    x0, y0 = torch.floor(xin), torch.floor(yin)
    dx, dy = (xin - x0).unsqueeze(-1), (yin - y0).unsqueeze(-1)
    x0, y0 = x0.long(), y0.long()
    batch = torch.arange(n, device=dev).view(n, 1, 1)

    def tap(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:  # (n, H, W, 3) float64
        return x[batch, row.clamp(0, h - 1), col.clamp(0, w - 1)].double()

    if bicubic:
        rows = []
        for r in range(4):
            cols = [tap(y0 - 1 + r, x0 - 1 + k) for k in range(4)]
            rows.append(_cubic(cols[0], cols[1], cols[2], cols[3], dx))
        v = _cubic(rows[0], rows[1], rows[2], rows[3], dy)
    else:
        top = tap(y0, x0)
        v1 = top + (tap(y0, x0 + 1) - top) * dx
        bottom = tap(y0 + 1, x0)
        v2 = bottom + (tap(y0 + 1, x0 + 1) - bottom) * dx
        v = v1 + (v2 - v1) * dy
    out = v.clamp(0, 255).trunc().to(torch.uint8)
    fill_px = _upload(np.asarray(fill, np.uint8), dev).view(1, 1, 1, 3)
    return torch.where(outside.unsqueeze(-1), fill_px, out)
