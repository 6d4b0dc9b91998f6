"""Batch augmentations that run on the training device after normalisation, as timm does
them (RandomErasing in the dataset transform, then Mixup/CutMix on the batch).

Each is split into a sampler that consumes an explicit RNG in exactly timm's order (so
the tests can hand timm the same stream and expect identical output) and an `apply` on
tensors. The loader seeds those RNGs per batch, which makes resumed runs reproducible.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ErasingSpec:
    probability: float = 0.25
    mode: str = "pixel"  # pixel: per-pixel N(0,1); rand: per-channel N(0,1); const: zeros
    min_area: float = 0.02
    max_area: float = 1 / 3
    min_aspect: float = 0.3


def sample_erasing(
    rng: random.Random, batch: int, height: int, width: int, spec: ErasingSpec
) -> list[tuple[int, int, int, int] | None]:
    """Per image: None or the erased box (top, left, h, w); timm RandomErasing(count=1)'s draws."""
    boxes: list[tuple[int, int, int, int] | None] = []
    log_aspect = (math.log(spec.min_aspect), math.log(1 / spec.min_aspect))
    area = height * width
    for _ in range(batch):
        box = None
        if rng.random() <= spec.probability:
            for _attempt in range(10):
                target_area = rng.uniform(spec.min_area, spec.max_area) * area
                aspect = math.exp(rng.uniform(*log_aspect))
                h = int(round(math.sqrt(target_area * aspect)))
                w = int(round(math.sqrt(target_area / aspect)))
                if w < width and h < height:
                    box = (rng.randint(0, height - h), rng.randint(0, width - w), h, w)
                    break
        boxes.append(box)
    return boxes


def apply_erasing(
    images: torch.Tensor,
    boxes: list[tuple[int, int, int, int] | None],
    mode: str,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Fill each box in place, drawing values in image order like timm's `_get_pixels`."""
    chans = images.shape[1]
    for i, box in enumerate(boxes):
        if box is None:
            continue
        top, left, h, w = box
        if mode == "pixel":
            fill = torch.empty((chans, h, w), dtype=images.dtype, device=images.device).normal_(
                generator=generator
            )
        elif mode == "rand":
            fill = torch.empty((chans, 1, 1), dtype=images.dtype, device=images.device).normal_(
                generator=generator
            )
        else:
            fill = torch.zeros((chans, 1, 1), dtype=images.dtype, device=images.device)
        images[i, :, top : top + h, left : left + w] = fill
    return images


@dataclass(frozen=True)
class MixSpec:
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


@dataclass(frozen=True)
class MixParams:
    lam: float = 1.0
    use_cutmix: bool = False
    box: tuple[int, int, int, int] | None = None  # (y_lo, y_hi, x_lo, x_hi) pasted from the flipped batch


def sample_mix(rng: np.random.RandomState, spec: MixSpec, height: int, width: int) -> MixParams:
    """timm Mixup(mode='batch', correct_lam=True): `_params_per_batch` then `cutmix_bbox_and_lam`."""
    if not spec.active or not rng.rand() < spec.prob:
        return MixParams()
    use_cutmix = False
    if spec.mixup_alpha > 0 and spec.cutmix_alpha > 0:
        use_cutmix = bool(rng.rand() < spec.switch_prob)
        lam = (
            rng.beta(spec.cutmix_alpha, spec.cutmix_alpha)
            if use_cutmix
            else rng.beta(spec.mixup_alpha, spec.mixup_alpha)
        )
    elif spec.mixup_alpha > 0:
        lam = rng.beta(spec.mixup_alpha, spec.mixup_alpha)
    else:
        use_cutmix = True
        lam = rng.beta(spec.cutmix_alpha, spec.cutmix_alpha)
    lam = float(lam)
    if lam == 1.0:
        return MixParams()
    if not use_cutmix:
        return MixParams(lam=lam)
    ratio = np.sqrt(1 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = rng.randint(0, height), rng.randint(0, width)
    yl, yh = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + (cut_h + 1) // 2, 0, height)
    xl, xh = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + (cut_w + 1) // 2, 0, width)
    lam = 1.0 - float((yh - yl) * (xh - xl)) / float(height * width)
    return MixParams(lam=lam, use_cutmix=True, box=(int(yl), int(yh), int(xl), int(xh)))


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float, lam: float = 1.0) -> torch.Tensor:
    """timm's mixup_target: smoothed one-hot of labels, mixed with the flipped batch's by lam."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    y1 = torch.full((labels.shape[0], num_classes), off, device=labels.device).scatter_(
        1, labels.long().view(-1, 1), on
    )
    if lam == 1.0:
        return y1
    return y1 * lam + y1.flip(0) * (1.0 - lam)


def apply_mix(images: torch.Tensor, params: MixParams) -> torch.Tensor:
    """Mix `images` in place with the reversed batch (timm's Mixup on the images; the targets
    are `soft_targets(labels, ..., params.lam)`)."""
    if params.lam != 1.0:
        if params.use_cutmix and params.box is not None:
            yl, yh, xl, xh = params.box
            # Flip only the pasted region (timm flips the whole batch, then slices).
            images[:, :, yl:yh, xl:xh] = images[:, :, yl:yh, xl:xh].flip(0)
        else:
            flipped = images.flip(0).mul_(1.0 - params.lam)
            images.mul_(params.lam).add_(flipped)
    return images
