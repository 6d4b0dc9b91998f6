"""The image's flip and RandAugment geometric ops, applied to its teacher score maps (tlt order).

In TokenLabeling's pipeline (`data.augment_order: tlt`) the image is flipped, RandAugmented
at full size, then cropped. tlt moves the label map with the image before the crop:

- flip: `RandomHorizontalFlipWithLabel` mirrors the map (`label.flip(3)`), image and map
  together (tlt/data/label_transforms_factory.py);
- Rotate, ShearX/Y, TranslateX/YRel: each has a label op with the same sampled level
  (`NAME_TO_LABELOP`, tlt/data/random_augment_label.py), `affine_label`, which resamples
  the top-k map (2, k, H, W: scores and class indices) with `scipy.ndimage.affine_transform`
  at order 0 (nearest cell): scores with mode "constant" (0 where the source falls outside
  the map), indices with mode "nearest". The map keeps its shape (H, W). A cell whose
  scores are all 0 gives all-zero logits, so its target is uniform after the softmax: that
  is the label "fill", where the image shows the fill colour;
- the colour ops leave the map alone. The crop box is then recorded on the augmented image.

What we do the same: the map keeps its shape, nearest-cell sampling (half up), scores 0 in
the fill, indices of the nearest cell there, one resampling per op in the op order.

What we do differently (`convention="centre"`, the default, used in training), so that the
map moves exactly with the image for any image shape and any teacher view:

1. tlt applies the image's pixel-space matrix to the map's cell indices unchanged (it swaps
   the ShearX/ShearY and TranslateX/Y label functions to compensate for ndimage's (row,
   col) axis order, so the directions are right). That is exact only when a map cell is
   square in image pixels; on a 4:3 image with a square map a 30 degree rotation of the
   map is not the image's rotation. We conjugate the image's matrix with the map->image
   mapping (per-axis scale and the view's offset, `view.py`), so the map follows the image.
2. tlt puts cell index i at pixel i * cell size (cell corners), while Pillow samples pixel
   centres: its label rotation turns about a point half a cell off the image centre and
   its shears are off by shear * half a cell. We map cell centres ((i + 0.5) * cell size).
3. tlt's fill is where the source index is outside [0, n - 1] (ndimage's constant mode), half
   a cell inside the map's edge. Ours is where the source point is outside the image
   (Pillow's test for the fill colour), and a point inside the image but outside the
   teacher's view takes the nearest map cell (the border clamp of targets.py).

A teacher view smaller than the image (center_crop): the moved map keeps covering the view's
rectangle of the (augmented) image, as tlt's map keeps its shape. What an op moves out of
that rectangle leaves the map, and what it moves in from outside the view takes the nearest
map cell, like the parts of a crop outside the view. With the squash view (our generator's)
the map covers the whole image and nothing is lost but the fill.

`convention="tlt"` reproduces tlt's own arithmetic (cell corners, ndimage's fill test) for
the comparison test with tlt's code; on a square image with a square map and the squash
view it is bitwise tlt's `affine_label` output (tests/test_tokenlabel_tlt.py).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..data.randaugment import NO_OP, ROTATE, TRANSLATE_X, TRANSLATE_Y, affine_matrix

Convention = Literal["centre", "tlt"]


def label_matrix(
    op: int,
    arg: float,
    img_w: float,
    img_h: float,
    rect: np.ndarray,
    map_w: int,
    map_h: int,
    convention: Convention = "centre",
) -> tuple[float, ...] | None:
    """The op's inverse map in map-cell index coordinates: output cell (col, row) samples the
    input map at (L00 col + L01 row + tx, L10 col + L11 row + ty); None for colour ops.
    `rect` (x0, y0, x1, y1): the region of the image the map covers, in image fractions."""
    m = affine_matrix(op, arg, int(img_w), int(img_h))
    if m is None:
        return None
    a, b, _, d, e, _ = m
    x0, y0, x1, y1 = (float(v) for v in rect)
    # Pixels per map cell along each axis; exactly equal when the covered region is square in
    # pixels and the map is square, so the linear part is then tlt's matrix unchanged.
    sx, sy = (x1 - x0) * img_w / map_w, (y1 - y0) * img_h / map_h
    offset = 0.5 if convention == "centre" else 0.0  # where cell index i lies, in cells
    l00, l01, l10, l11 = a, b * (sy / sx), d * (sx / sy), e
    if op == ROTATE:
        # About the image centre, written in map cells as tlt's rotate_label does.
        cx = (0.5 - x0) / (x1 - x0) * map_w - offset
        cy = (0.5 - y0) / (y1 - y0) * map_h - offset
        tx = ((l00 * -cx + l01 * -cy) + 0.0) + cx
        ty = ((l10 * -cx + l11 * -cy) + 0.0) + cy
        return l00, l01, tx, l10, l11, ty
    # Cell (0, 0) sits at pixel p0; t' = S^-1 (A_lin p0 + t - p0).
    p0x, p0y = x0 * img_w + offset * sx, y0 * img_h + offset * sy
    tx = ((a - 1.0) * p0x + b * p0y) / sx
    ty = (d * p0x + (e - 1.0) * p0y) / sy
    # Translations are a fraction `arg` of the image side: arg * cells per image side (tlt: pct * map side).
    if op == TRANSLATE_X:
        tx += arg * (map_w / (x1 - x0))
    elif op == TRANSLATE_Y:
        ty += arg * (map_h / (y1 - y0))
    return l00, l01, tx, l10, l11, ty


def _resample(
    scores: np.ndarray,
    indices: np.ndarray,
    m: tuple[float, ...],
    img_w: float,
    img_h: float,
    rect: np.ndarray,
    convention: Convention,
) -> tuple[np.ndarray, np.ndarray]:
    """One map (H, W, k) resampled at the nearest cell of each output cell's source."""
    h, w, _ = scores.shape
    l00, l01, tx, l10, l11, ty = m
    row, col = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    src_c = l00 * col + l01 * row + tx
    src_r = l10 * col + l11 * row + ty
    if convention == "tlt":  # ndimage's constant mode: inside iff 0 <= index <= n - 1
        inside = (src_c >= 0) & (src_c <= w - 1) & (src_r >= 0) & (src_r <= h - 1)
    else:  # Pillow's fill test on the source point in image pixels
        x0, y0, x1, y1 = (float(v) for v in rect)
        px = x0 * img_w + (src_c + 0.5) * ((x1 - x0) * img_w / w)
        py = y0 * img_h + (src_r + 0.5) * ((y1 - y0) * img_h / h)
        inside = (px >= 0) & (px < img_w) & (py >= 0) & (py < img_h)
    ci = np.clip(np.floor(src_c + 0.5), 0, w - 1).astype(np.int64)  # nearest cell, border clamp
    ri = np.clip(np.floor(src_r + 0.5), 0, h - 1).astype(np.int64)
    out_scores = np.where(inside[..., None], scores[ri, ci], np.zeros((), scores.dtype))
    return out_scores, indices[ri, ci]


def augment_maps(
    scores: np.ndarray,
    indices: np.ndarray,
    flips: np.ndarray,
    ops: np.ndarray | None,
    args: np.ndarray | None,
    heights: np.ndarray,
    widths: np.ndarray,
    rects: np.ndarray,
    convention: Convention = "centre",
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k maps [B, H, W, k] (scores, indices) after each image's flip and RandAugment
    geometric ops (ops/args [B, layers] as sampled by the loader; None: no RandAugment).
    heights/widths: the stored images' sizes; rects [B, 4]: the region each map covers
    (`TeacherView.rect`). Returns new arrays; the inputs are left alone."""
    flips = np.asarray(flips, np.bool_)
    rects = np.asarray(rects, np.float64)
    if flips.any():
        if not np.allclose(rects[flips, 0] + rects[flips, 2], 1.0):
            raise ValueError("a flipped image's teacher view must be centred horizontally to mirror its map")
        scores = np.where(flips[:, None, None, None], scores[:, :, ::-1], scores)
        indices = np.where(flips[:, None, None, None], indices[:, :, ::-1], indices)
    else:
        scores, indices = scores.copy(), indices.copy()
    if ops is None:
        return scores, indices
    assert args is not None  # the loader samples ops and args together
    b, h, w, _ = scores.shape
    for k in range(b):
        for layer in range(ops.shape[1]):
            op = int(ops[k, layer])
            if op == NO_OP:
                continue
            m = label_matrix(
                op, float(args[k, layer]), float(widths[k]), float(heights[k]), rects[k], w, h, convention
            )
            if m is not None:
                scores[k], indices[k] = _resample(
                    scores[k], indices[k], m, float(widths[k]), float(heights[k]), rects[k], convention
                )
    return scores, indices
