"""RandAugment as timm defines it (`rand-m9-mstd0.5-inc1`), split for speed and reproducibility:

- `RandAugmentSpec.parse` reads timm's config string (m, n, p, mstd, mmax, inc);
- `sample_ops` draws every sample's ops, application and magnitudes for a batch from the
  batch's own numpy Generator (timm draws the same distributions from the global
  `random`/`np.random`, which cannot be replayed on resume);
- `apply_op` applies one with the numba kernels of `pil_ops`; the decode kernel calls it
  on each uint8 image right after its crop (`decode.py`). On a GPU run the same draws
  are applied batched on the device instead (`device_randaugment.py`), bit-identically.
  In the tlt order (`data.augment_order: tlt`) it runs on the whole stored image before the
  crop, each op only on the window `source_window` says the crop needs.

Ops, order and level functions are timm's `_RAND_INCREASING_TRANSFORMS` (inc1) or
`_RAND_TRANSFORMS` (inc0); tlt's RandAugment (tlt/data/random_augment_label.py) has the same
ops, levels and draws. Affine ops use the recipe's filter (bicubic: the RMT/DeiT recipe's
`--train-interpolation bicubic`; `random` draws bilinear or bicubic per op, tlt order only)
and fill with the mean pixel, as timm's create_transform.
One deliberate difference: a posterize level of 0 bits turns the image black (Pillow < 10
semantics); Pillow >= 10 raises on it, which crashes timm's reference at magnitude 10.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from . import pil_ops
from .errors import DataError

# Kernel op codes; the order is timm's transform list order (same for inc0 and inc1).
OP_NAMES = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
NO_OP = -1
(
    AUTO_CONTRAST,
    EQUALIZE,
    INVERT,
    ROTATE,
    POSTERIZE,
    SOLARIZE,
    SOLARIZE_ADD,
    COLOR,
    CONTRAST,
    BRIGHTNESS,
    SHARPNESS,
    SHEAR_X,
    SHEAR_Y,
    TRANSLATE_X,
    TRANSLATE_Y,
) = range(len(OP_NAMES))
_LEVEL_DENOM = 10.0


@dataclass(frozen=True)
class RandAugmentSpec:
    magnitude: float = 10.0
    num_layers: int = 2
    prob: float = 0.5
    magnitude_std: float = 0.0
    magnitude_max: float = _LEVEL_DENOM
    increasing: bool = False
    ops: tuple[int, ...] | None = None  # draw only these op codes (tests force e.g. the geometric ones)

    @classmethod
    def parse(cls, config: str) -> RandAugmentSpec:
        """timm's syntax, e.g. 'rand-m9-mstd0.5-inc1' (sections: m, n, p, mstd, mmax, inc)."""
        parts = config.split("-")
        if parts[0] != "rand":
            raise DataError(
                f"data.auto_augment {config!r}: only RandAugment ('rand-...', e.g. "
                "'rand-m9-mstd0.5-inc1') is supported; use null to disable"
            )
        kw: dict[str, float | int | bool] = {}
        for part in parts[1:]:
            m = re.fullmatch(r"(mstd|mmax|inc|m|n|p)(\d+(?:\.\d*)?)", part)
            if not m:
                raise DataError(
                    f"data.auto_augment {config!r}: unknown section {part!r} "
                    "(expected m<int>, n<int>, p<float>, mstd<float>, mmax<int>, inc<0|1>)"
                )
            key, val = m.groups()
            if key == "mstd":
                kw["magnitude_std"] = math.inf if float(val) > 100 else float(val)
            elif key == "mmax":
                kw["magnitude_max"] = float(val)
            elif key == "inc":
                kw["increasing"] = bool(int(float(val)))
            elif key == "m":
                kw["magnitude"] = float(int(float(val)))
            elif key == "n":
                kw["num_layers"] = int(float(val))
            else:
                kw["prob"] = float(val)
        return cls(**kw)  # type: ignore[arg-type]


def level_to_arg(op: np.ndarray, level: np.ndarray, negate: np.ndarray, increasing: bool) -> np.ndarray:
    """timm's LEVEL_TO_ARG, vectorised: the kernel argument of each op at magnitude `level`."""
    frac = level / _LEVEL_DENOM
    sign = np.where(negate, -1.0, 1.0)
    arg = np.zeros_like(level)
    arg = np.where(op == ROTATE, frac * 30.0 * sign, arg)
    bits = np.floor(frac * 4).astype(np.int64)
    arg = np.where(op == POSTERIZE, 4 - bits if increasing else bits, arg)
    thresh = np.minimum(256, np.floor(frac * 256)).astype(np.int64)
    arg = np.where(op == SOLARIZE, 256 - thresh if increasing else thresh, arg)
    arg = np.where(op == SOLARIZE_ADD, np.minimum(128, np.floor(frac * 110)), arg)
    enhance = np.maximum(0.1, 1.0 + sign * frac * 0.9) if increasing else frac * 1.8 + 0.1
    arg = np.where((op >= COLOR) & (op <= SHARPNESS), enhance, arg)
    arg = np.where((op == SHEAR_X) | (op == SHEAR_Y), frac * 0.3 * sign, arg)
    arg = np.where((op == TRANSLATE_X) | (op == TRANSLATE_Y), frac * 0.45 * sign, arg)
    return arg


def sample_ops(rng: np.random.Generator, batch: int, spec: RandAugmentSpec) -> tuple[np.ndarray, np.ndarray]:
    """(ops, args), each (batch, num_layers): op code (NO_OP when the layer is skipped) and argument."""
    shape = (batch, spec.num_layers)
    if spec.ops is None:
        op = rng.integers(0, len(OP_NAMES), shape)
    else:
        op = np.asarray(spec.ops, np.int64)[rng.integers(0, len(spec.ops), shape)]
    applied = rng.random(shape) <= spec.prob  # timm skips when random() > prob
    if spec.magnitude_std == math.inf:
        level = rng.uniform(0.0, spec.magnitude, shape)
    elif spec.magnitude_std > 0:
        level = rng.normal(spec.magnitude, spec.magnitude_std, shape)
    else:
        level = np.full(shape, spec.magnitude)
    level = np.clip(level, 0.0, spec.magnitude_max)
    negate = rng.random(shape) > 0.5
    args = level_to_arg(op, level, negate, spec.increasing)
    return np.where(applied, op, NO_OP).astype(np.int64), args.astype(np.float64)


GEOMETRIC_OPS = (ROTATE, SHEAR_X, SHEAR_Y, TRANSLATE_X, TRANSLATE_Y)


def affine_matrix(op: int, arg: float, width: int, height: int) -> tuple[float, ...] | None:
    """The inverse map (a, b, c, d, e, f) Pillow applies for a geometric op on a width x height
    image (output pixel centre (x, y) samples the input at (ax + by + c, dx + ey + f), in
    continuous pixel coordinates), or None for the other ops; the same numbers `apply_op` uses."""
    if op == ROTATE:
        return pil_ops.rotation_matrix(arg, width, height)
    if op == SHEAR_X:
        return (1.0, arg, 0.0, 0.0, 1.0, 0.0)
    if op == SHEAR_Y:
        return (1.0, 0.0, 0.0, arg, 1.0, 0.0)
    if op == TRANSLATE_X:
        return (1.0, 0.0, arg * width, 0.0, 1.0, 0.0)
    if op == TRANSLATE_Y:
        return (1.0, 0.0, 0.0, 0.0, 1.0, arg * height)
    return None


@njit(cache=True, nogil=True)
def apply_op(img, op, arg, fill, bicubic, y0=0, y1=-1, x0=0, x1=-1):
    """One op in place; only the window [y0, y1) x [x0, x1) (-1: to the end) is guaranteed
    (the whole image by default); statistics (histograms, mean) always come from the whole
    image, and affine ops may read outside the window (see `source_window`)."""
    h, w, _ = img.shape
    if op == AUTO_CONTRAST:
        pil_ops.auto_contrast(img, y0, y1, x0, x1)
    elif op == EQUALIZE:
        pil_ops.equalize(img, y0, y1, x0, x1)
    elif op == INVERT:
        pil_ops.point(img, 0, 0.0, y0, y1, x0, x1)
    elif op == ROTATE:
        pil_ops.rotate(img, arg, fill, bicubic, y0, y1, x0, x1)
    elif op == POSTERIZE:
        pil_ops.point(img, 1, arg, y0, y1, x0, x1)
    elif op == SOLARIZE:
        pil_ops.point(img, 2, arg, y0, y1, x0, x1)
    elif op == SOLARIZE_ADD:
        pil_ops.point(img, 3, arg, y0, y1, x0, x1)
    elif op == COLOR:
        pil_ops.color(img, arg, y0, y1, x0, x1)
    elif op == CONTRAST:
        pil_ops.contrast(img, arg, y0, y1, x0, x1)
    elif op == BRIGHTNESS:
        pil_ops.brightness(img, arg, y0, y1, x0, x1)
    elif op == SHARPNESS:
        pil_ops.sharpness(img, arg, y0, y1, x0, x1)
    elif op == SHEAR_X:
        pil_ops.affine(img, 1.0, arg, 0.0, 0.0, 1.0, 0.0, fill, bicubic, y0, y1, x0, x1)
    elif op == SHEAR_Y:
        pil_ops.affine(img, 1.0, 0.0, 0.0, arg, 1.0, 0.0, fill, bicubic, y0, y1, x0, x1)
    elif op == TRANSLATE_X:
        pil_ops.affine(img, 1.0, 0.0, arg * w, 0.0, 1.0, 0.0, fill, bicubic, y0, y1, x0, x1)
    elif op == TRANSLATE_Y:
        pil_ops.affine(img, 1.0, 0.0, 0.0, 0.0, 1.0, arg * h, fill, bicubic, y0, y1, x0, x1)


_TAP_MARGIN = 3  # bicubic taps reach from floor(x - 0.5) - 1 to + 2 around a source point x


@njit(cache=True, nogil=True)
def source_window(op, arg, h, w, y0, y1, x0, x1):
    """The window of its input an op reads to compute the output window [y0, y1) x [x0, x1):
    the loader works back from the crop box through the ops (tlt order), so each op computes
    only what the crop will show. Histogram/mean ops need their whole input."""
    if op == AUTO_CONTRAST or op == EQUALIZE or op == CONTRAST:
        return 0, h, 0, w
    if op == SHARPNESS:
        return max(y0 - 1, 0), min(y1 + 1, h), max(x0 - 1, 0), min(x1 + 1, w)
    if op == ROTATE:
        a, b, c, d, e, f = pil_ops.rotation_matrix(arg, w, h)
    elif op == SHEAR_X:
        a, b, c, d, e, f = 1.0, arg, 0.0, 0.0, 1.0, 0.0
    elif op == SHEAR_Y:
        a, b, c, d, e, f = 1.0, 0.0, 0.0, arg, 1.0, 0.0
    elif op == TRANSLATE_X:
        a, b, c, d, e, f = 1.0, 0.0, arg * w, 0.0, 1.0, 0.0
    elif op == TRANSLATE_Y:
        a, b, c, d, e, f = 1.0, 0.0, 0.0, 0.0, 1.0, arg * h
    else:  # point ops: pixel by pixel
        return y0, y1, x0, x1
    if y1 <= y0 or x1 <= x0:
        return y0, y0, x0, x0
    lo_x, hi_x, lo_y, hi_y = math.inf, -math.inf, math.inf, -math.inf
    for cy in (y0, y1):  # an affine map takes the window to a parallelogram: its corners bound it
        for cx in (x0, x1):
            xin, yin = a * cx + b * cy + c, d * cx + e * cy + f
            lo_x, hi_x = min(lo_x, xin), max(hi_x, xin)
            lo_y, hi_y = min(lo_y, yin), max(hi_y, yin)
    sx0 = min(max(int(math.floor(lo_x)) - _TAP_MARGIN, 0), w)
    sx1 = min(max(int(math.ceil(hi_x)) + _TAP_MARGIN, sx0), w)
    sy0 = min(max(int(math.floor(lo_y)) - _TAP_MARGIN, 0), h)
    sy1 = min(max(int(math.ceil(hi_y)) + _TAP_MARGIN, sy0), h)
    return sy0, sy1, sx0, sx1


def fill_color(mean: Sequence[float]) -> np.ndarray:
    """timm's img_mean hparam: the mean pixel as uint8."""
    return np.array([min(255, round(255 * m)) for m in mean], np.uint8)
