"""Each augmentation against timm's implementation, at fixed magnitudes and shared RNG streams."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from data_helpers import smooth_image
from PIL import Image
from timm.data import auto_augment as A
from timm.data.mixup import Mixup
from timm.data.random_erasing import RandomErasing

from rmt_dist.data import pil_ops
from rmt_dist.data import randaugment as R
from rmt_dist.data.device_augment import (
    ErasingSpec,
    MixParams,
    MixSpec,
    apply_erasing,
    apply_mix,
    sample_erasing,
    sample_mix,
    soft_targets,
)
from rmt_dist.data.host_finish import erasing_table, finish_on_host
from rmt_dist.data.sampling import random_resized_crop_boxes

FILL = R.fill_color([0.485, 0.456, 0.406])
HPARAMS = dict(translate_const=100, img_mean=tuple(FILL.tolist()), magnitude_std=0.5)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    px = smooth_image(rng, 40, 56).astype(int) + rng.integers(-30, 30, (40, 56, 3))
    # Range 20..220 so that no op (autocontrast included) is the identity on it.
    return (np.clip(px, 0, 255) * 0.78 + 20).astype(np.uint8)


@pytest.mark.parametrize("increasing", [True, False])
@pytest.mark.parametrize("negate", [False, True])
@pytest.mark.parametrize("name", R.OP_NAMES)
def test_rand_augment_op_matches_timm(image, name, negate, increasing, monkeypatch):
    timm_name = name
    if increasing and name in ("Posterize", "Solarize", "Color", "Contrast", "Brightness", "Sharpness"):
        timm_name = name + "Increasing"
    monkeypatch.setattr(A, "_randomly_negate", lambda v: -v if negate else v)
    magnitude = 9.0 if increasing else 7.0  # inc0 Solarize at 9 (threshold 230) would be a no-op here
    level_fn = A.LEVEL_TO_ARG[timm_name]
    timm_args = level_fn(magnitude, HPARAMS) if level_fn else ()
    ref = A.NAME_TO_OP[timm_name](
        Image.fromarray(image), *timm_args, fillcolor=tuple(FILL.tolist()), resample=Image.BICUBIC
    )
    code = R.OP_NAMES.index(name)
    arg = R.level_to_arg(np.array([code]), np.array([magnitude]), np.array([negate]), increasing)[0]
    if timm_args:
        assert arg == pytest.approx(timm_args[0]), (arg, timm_args)
    ours = image.copy()
    R.apply_op(ours, code, arg, FILL, True)
    err = np.abs(ours.astype(int) - np.asarray(ref).astype(int))
    assert err.max() <= 1 and err.mean() < 0.01, (name, err.max(), err.mean())
    assert not np.array_equal(ours, image), "the op left the image unchanged: the comparison proves nothing"


def test_bilinear_affine_matches_pillow(image):
    ref = A.rotate(Image.fromarray(image), 17.0, fillcolor=tuple(FILL.tolist()), resample=Image.BILINEAR)
    ours = image.copy()
    R.apply_op(ours, R.ROTATE, 17.0, FILL, False)
    assert np.abs(ours.astype(int) - np.asarray(ref).astype(int)).max() <= 1


def test_posterize_zero_bits_is_black(image):
    # timm's level 10 gives 0 bits, which Pillow >= 10 rejects; we keep the old meaning.
    ours = image.copy()
    R.apply_op(ours, R.POSTERIZE, 0.0, FILL, True)
    assert ours.max() == 0


def test_rand_augment_sampling_follows_timm_config():
    spec = R.RandAugmentSpec.parse("rand-m9-mstd0.5-inc1")
    assert spec == R.RandAugmentSpec(magnitude=9, num_layers=2, prob=0.5, magnitude_std=0.5, increasing=True)
    ops, args = R.sample_ops(np.random.default_rng(0), 20000, spec)
    assert ops.shape == (20000, 2)
    applied = ops != R.NO_OP
    assert abs(applied.mean() - 0.5) < 0.01
    counts = np.bincount(ops[applied], minlength=15) / applied.sum()
    assert np.all(np.abs(counts - 1 / 15) < 0.01)
    rot = np.abs(args[ops == R.ROTATE]) / 3.0  # |degrees| = magnitude * 3
    assert abs(rot.mean() - 9.0) < 0.05 and abs(rot.std() - 0.5) < 0.05 and rot.max() <= 10.0
    assert abs((args[ops == R.ROTATE] < 0).mean() - 0.5) < 0.03
    with pytest.raises(ValueError, match="auto_augment"):
        R.RandAugmentSpec.parse("v0")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_erasing_matches_timm(seed):
    x = torch.randn(8, 3, 24, 20)
    random.seed(seed)
    torch.manual_seed(seed + 100)
    ref = RandomErasing(probability=0.5, mode="pixel", device="cpu")(x.clone())
    spec = ErasingSpec(probability=0.5, mode="pixel")
    boxes = sample_erasing(random.Random(seed), 8, 24, 20, spec)
    assert any(b is not None for b in boxes) and any(b is None for b in boxes)
    gen = torch.Generator().manual_seed(seed + 100)
    ours = apply_erasing(x.clone(), boxes, "pixel", gen)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("seed", range(6))
def test_mixup_cutmix_matches_timm(seed):
    x = torch.randn(6, 3, 16, 12)
    y = torch.tensor([0, 3, 1, 4, 2, 3])
    np.random.seed(seed)
    ref_x, ref_y = Mixup(
        mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1, num_classes=5
    )(x.clone(), y)
    params = sample_mix(np.random.RandomState(seed), MixSpec(), 16, 12)
    ours_x, ours_y = apply_mix(x.clone(), params), soft_targets(y, 5, 0.1, params.lam)
    assert torch.equal(ours_x, ref_x) and torch.allclose(ours_y, ref_y)


@pytest.mark.parametrize("mode", ["pixel", "rand", "const"])
@pytest.mark.parametrize("mix", ["none", "mixup", "cutmix"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_host_finish_equals_the_torch_path(mode, mix, channels_last):
    # The CPU device's fused pass (normalise + erasing + mix in the loader's workers) must give
    # the very batch the torch ops give on a device.
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (6, 20, 18, 3), dtype=np.uint8)
    mean = np.array([123.7, 116.3, 103.5], np.float32)
    inv_std = np.array([1 / 58.4, 1 / 57.1, 1 / 57.4], np.float32)
    boxes = sample_erasing(random.Random(3), 6, 20, 18, ErasingSpec(probability=0.6, mode=mode))
    assert any(b is not None for b in boxes) and any(b is None for b in boxes)
    params = {
        "none": MixParams(),
        "mixup": MixParams(lam=0.6180339),
        "cutmix": MixParams(lam=0.7, use_cutmix=True, box=(3, 11, 5, 16)),
    }[mix]

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = (x - torch.from_numpy(mean).view(1, 3, 1, 1)) * torch.from_numpy(inv_std).view(1, 3, 1, 1)
    apply_erasing(x, boxes, mode, torch.Generator().manual_seed(11))
    expected = apply_mix(x.contiguous(), params)

    table, noise = erasing_table(boxes, mode, 6, torch.Generator().manual_seed(11))
    out = np.empty((6, 20, 18, 3) if channels_last else (6, 3, 20, 18), np.float32)
    finish_on_host(images, out, mean, inv_std, channels_last, table, noise, params)
    got = torch.from_numpy(out)
    got = got.permute(0, 3, 1, 2) if channels_last else got
    assert torch.equal(got, expected)


def test_mixup_modes_both_occur():
    modes = {sample_mix(np.random.RandomState(s), MixSpec(), 16, 16).use_cutmix for s in range(20)}
    assert modes == {True, False}


def test_random_resized_crop_boxes_respect_scale_ratio():
    rng = np.random.default_rng(0)
    h = rng.integers(50, 400, 5000)
    w = rng.integers(50, 400, 5000)
    b = random_resized_crop_boxes(rng, h, w, (0.08, 1.0), (3 / 4, 4 / 3))
    top, left, bh, bw = b.T
    assert np.all(top >= 0) and np.all(left >= 0) and np.all(top + bh <= h) and np.all(left + bw <= w)
    frac = bh * bw / (h * w)
    assert frac.min() > 0.06 and frac.max() <= 1.0
    aspect = bw / bh
    assert np.percentile(aspect, 1) > 0.7 and np.percentile(aspect, 99) < 1.45
    # Same distribution as torchvision's RandomResizedCrop.get_params on the same image sizes.
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    ref = np.array(
        [
            RandomResizedCrop.get_params(torch.empty(1, hh, ww), [0.08, 1.0], [3 / 4, 4 / 3])
            for hh, ww in zip(h.tolist(), w.tolist())
        ]
    )
    ref_frac = ref[:, 2] * ref[:, 3] / (h * w)
    assert abs(frac.mean() - ref_frac.mean()) < 0.015 and abs(np.median(frac) - np.median(ref_frac)) < 0.03


def test_shear_and_translate_fast_path_equals_pillow():
    # ShearX/Y and TranslateX/Y take a vectorised row path (one fractional shift per row);
    # it must stay identical to Pillow's per-pixel affine, fill and borders included.
    rng = np.random.default_rng(5)
    fill = tuple(FILL.tolist())
    for trial in range(48):
        h, w = int(rng.integers(20, 225)), int(rng.integers(150, 225))
        img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        m, t = rng.uniform(-0.3, 0.3), rng.uniform(-0.45, 0.45)
        if trial % 2 == 0:
            # Decimal magnitudes, as RandAugment without mstd gives (m9: shift 0.405 * w): sums
            # then land within rounding of integers, where per-row and per-pixel dx disagree.
            m, t = round(m, 2), round(t, 2)
        args = [
            (1.0, m, 0.0, 0.0, 1.0, 0.0),
            (1.0, 0.0, 0.0, m, 1.0, 0.0),
            (1.0, 0.0, t * w, 0.0, 1.0, 0.0),
            (1.0, 0.0, 0.0, 0.0, 1.0, t * h),
        ][trial % 4]
        ref = Image.fromarray(img).transform((w, h), Image.AFFINE, args, Image.BICUBIC, fillcolor=fill)
        ours = img.copy()
        pil_ops.affine(ours, *args, FILL, True)
        np.testing.assert_array_equal(ours, np.asarray(ref), err_msg=f"affine {args} on {h}x{w}")


def test_rotation_matrix_rounds_like_python():
    """Pillow rounds the rotation matrix with Python's round(x, 15) (correctly rounded
    decimal); numba's round differs in the last bit for a few % of angles."""
    angles = np.random.default_rng(0).uniform(-30.0, 30.0, 5000).tolist() + [0.0, 7.5, -12.25, 30.0]
    values = [f(-math.radians(a % 360.0)) for a in angles for f in (math.cos, math.sin)]
    values += [(k + 0.5) / 1e15 for k in range(-300, 300)]  # near-ties of x * 1e15
    assert [pil_ops.round15(v) for v in values] == [round(v, 15) for v in values]
