"""The loader's crops and eval resize against Pillow / timm / torchvision, pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_helpers import smooth_image
from PIL import Image
from timm.data import create_transform
from torchvision.transforms import functional as F

from rmt_dist.data.resample import BICUBIC, BILINEAR, resize_window
from rmt_dist.data.sampling import center_crop_boxes

PIL_FILTER = {BICUBIC: Image.BICUBIC, BILINEAR: Image.BILINEAR}


def textured(seed: int, h: int, w: int) -> np.ndarray:
    """Smooth colours plus pixel noise: every tap weight and rounding step shows."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(-60, 61, (h, w, 3))
    return np.clip(smooth_image(rng, h, w).astype(np.int64) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return textured(3, 187, 251)


def crop_resize(
    img: np.ndarray, box: tuple[int, int, int, int], size: int, flip: bool, kind: int
) -> np.ndarray:
    top, left, h, w = box
    out = np.empty((size, size, 3), np.uint8)
    resize_window(img, top, left, h, w, size, size, 0, 0, out, flip, kind)
    return out


@pytest.mark.parametrize("kind", [BICUBIC, BILINEAR])
def test_random_resized_crop_equals_pillow(photo, kind):
    # timm's RandomResizedCropAndInterpolation: img.crop(box).resize(size, filter), then flip.
    # Boxes cover downscaling, upscaling, mixed, and both of Pillow 13's pass orders (vertical
    # first when the height shrinks more than twice as much as the width).
    rng = np.random.default_rng(0)
    boxes = [(0, 0, 187, 251), (10, 20, 150, 40), (5, 7, 30, 200), (0, 0, 64, 64), (3, 4, 180, 70)]
    boxes += [
        (
            int(rng.integers(0, 100)),
            int(rng.integers(0, 100)),
            int(rng.integers(8, 88)),
            int(rng.integers(8, 152)),
        )
        for _ in range(30)
    ]
    vertical_first = 0
    for i, (top, left, h, w) in enumerate(boxes):
        flip = i % 2 == 1
        ref = Image.fromarray(photo).crop((left, top, left + w, top + h)).resize((56, 56), PIL_FILTER[kind])
        ref = np.asarray(ref.transpose(Image.FLIP_LEFT_RIGHT) if flip else ref)
        np.testing.assert_array_equal(
            crop_resize(photo, (top, left, h, w), 56, flip, kind),
            ref,
            err_msg=f"box {(top, left, h, w)} flip {flip}",
        )
        vertical_first += (h - 56) > 0 and (h - 56) > (w - 56) * 2
    assert vertical_first >= 3  # both pass orders were exercised


@pytest.mark.parametrize("shape", [(187, 251), (251, 187), (200, 200), (90, 300)])
@pytest.mark.parametrize("crop_pct", [0.875, 0.96, 1.0])
def test_eval_resize_equals_timm(shape, crop_pct):
    img = textured(shape[0], *shape)
    size = 64
    boxes, resize = center_crop_boxes(np.array([shape[0]]), np.array([shape[1]]), size, crop_pct)
    ours = np.empty((size, size, 3), np.uint8)
    resize_window(img, *boxes[0], *resize[0], ours, False, BICUBIC)
    # timm's eval transform (Resize(floor(size / crop_pct), bicubic) + CenterCrop(size)) on the
    # same pixels, then its ToTensor + Normalize undone back to uint8.
    tf = create_transform(
        size,
        is_training=False,
        crop_pct=crop_pct,
        interpolation="bicubic",
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    ref = (tf(Image.fromarray(img)) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(ours, ref)


def test_train_crop_equals_torchvision_resized_crop(photo):
    top, left, h, w = 17, 40, 120, 161
    ref = np.asarray(
        F.resized_crop(
            Image.fromarray(photo), top, left, h, w, [48, 48], interpolation=F.InterpolationMode.BICUBIC
        )
    )
    np.testing.assert_array_equal(crop_resize(photo, (top, left, h, w), 48, False, BICUBIC), ref)


def test_window_of_a_resize_equals_the_cropped_resize(photo):
    # resize_window computes only the window; it must equal the full resize, cropped.
    full = np.asarray(Image.fromarray(photo).resize((300, 220), Image.BICUBIC))
    out = np.empty((50, 70, 3), np.uint8)
    resize_window(photo, 0, 0, 187, 251, 220, 300, 33, 101, out, False, BICUBIC)
    np.testing.assert_array_equal(out, full[33:83, 101:171])
