"""RandAugment batched on the device (torch) against timm/Pillow and against the worker kernels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from timm.data import auto_augment as A

from rmt_dist.data import device_randaugment
from rmt_dist.data import randaugment as R
from rmt_dist.data.device_randaugment import rand_augment_on_device

FILL = R.fill_color([0.485, 0.456, 0.406])
HPARAMS = dict(translate_const=100, img_mean=tuple(FILL.tolist()), magnitude_std=0.5)
INCREASING = {"Posterize", "Solarize", "Color", "Contrast", "Brightness", "Sharpness"}


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """Eight 56x48 crops of real photos (edges, flat sky, saturated colours)."""
    src = load_sample_images().images
    rng = np.random.default_rng(0)
    crops = [
        src[i % 2][top : top + 56, left : left + 48]
        for i, (top, left) in enumerate(zip(rng.integers(0, 370, 8), rng.integers(0, 590, 8)))
    ]
    return np.ascontiguousarray(np.stack(crops))


def timm_op(
    img: np.ndarray, name: str, magnitude: float, negate: bool, increasing: bool, resample: int, monkeypatch
) -> np.ndarray:
    timm_name = name + "Increasing" if increasing and name in INCREASING else name
    monkeypatch.setattr(A, "_randomly_negate", lambda v: -v if negate else v)
    level_fn = A.LEVEL_TO_ARG[timm_name]
    args = level_fn(magnitude, HPARAMS) if level_fn else ()
    out = A.NAME_TO_OP[timm_name](
        Image.fromarray(img), *args, fillcolor=tuple(FILL.tolist()), resample=resample
    )
    return np.asarray(out)


@pytest.mark.parametrize("increasing", [True, False])
@pytest.mark.parametrize("negate", [False, True])
@pytest.mark.parametrize("name", R.OP_NAMES)
def test_each_op_on_device_equals_timm(photos, name, negate, increasing, monkeypatch):
    """The batch holds one op at three magnitudes (and a skipped image); every output pixel
    equals timm's (Pillow's) exactly."""
    code = R.OP_NAMES.index(name)
    magnitudes = [9.0, 5.5, 2.0, 0.0]
    if (
        name == "Posterize"
    ):  # 0 bits (level 10 inc1, < 2.5 inc0) is an error in Pillow >= 10 (see randaugment.py)
        magnitudes = [7.0, 5.5, 3.0, 0.0]
    x = photos[:4].copy()
    ops = np.full((4, 1), code)
    ops[3] = R.NO_OP
    args = R.level_to_arg(ops[:, 0], np.array(magnitudes), np.array([negate] * 4), increasing)[:, None]
    out = rand_augment_on_device(torch.from_numpy(x), ops, args, FILL, bicubic=True).numpy()
    for k in range(3):
        ref = timm_op(photos[k], name, magnitudes[k], negate, increasing, Image.BICUBIC, monkeypatch)
        assert np.array_equal(out[k], ref), (name, magnitudes[k], int((out[k] != ref).sum()))
    assert np.array_equal(out[3], photos[3])  # NO_OP
    changed = [not np.array_equal(out[k], photos[k]) for k in range(3)]
    assert any(changed), "the op left every image unchanged: the comparison proves nothing"


@pytest.mark.parametrize("name", ["Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"])
def test_bilinear_affine_on_device_equals_pillow(photos, name, monkeypatch):
    code = R.OP_NAMES.index(name)
    args = R.level_to_arg(np.array([code]), np.array([7.3]), np.array([True]), True)[:, None]
    out = rand_augment_on_device(
        torch.from_numpy(photos[:1].copy()), np.array([[code]]), args, FILL, bicubic=False
    ).numpy()
    assert np.array_equal(out[0], timm_op(photos[0], name, 7.3, True, True, Image.BILINEAR, monkeypatch))


@pytest.mark.parametrize("bicubic", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_mixed_batches_equal_the_worker_kernels(photos, seed, bicubic, monkeypatch):
    """Random rand-m9-mstd0.5-inc1 draws (every op, two layers, mixed in one batch): the
    device result equals the numba kernels the decode workers run, bit for bit."""
    monkeypatch.setattr(
        device_randaugment, "AFFINE_CHUNK_PIXELS", 2 * 56 * 48
    )  # affine ops in chunks of 2 images
    x = np.concatenate([photos, photos[:, ::-1]])  # 16 images
    ops, args = R.sample_ops(
        np.random.default_rng(seed), len(x), R.RandAugmentSpec.parse("rand-m9-mstd0.5-inc1")
    )
    ref = x.copy()
    for k in range(len(x)):
        for layer in range(ops.shape[1]):
            if ops[k, layer] != R.NO_OP:
                R.apply_op(ref[k], ops[k, layer], args[k, layer], FILL, bicubic)
    out = rand_augment_on_device(torch.from_numpy(x.copy()), ops, args, FILL, bicubic).numpy()
    assert len(np.unique(ops)) >= 8  # the batch really mixes op groups
    assert np.array_equal(out, ref)


def test_wrong_input_is_refused():
    with pytest.raises(ValueError, match=r"uint8 \(B, H, W, 3\)"):
        rand_augment_on_device(torch.zeros(2, 3, 8, 8), np.zeros((2, 1), np.int64), np.zeros((2, 1)), FILL)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("bicubic", [True, False])
def test_cuda_equals_the_worker_kernels_without_syncs(bicubic):
    """On the GPU: the same bits as the numba kernels, at 224 px, and no host-device sync
    while the batch is augmented (one would stall the training loop every step)."""
    src = load_sample_images().images
    rng = np.random.default_rng(3)
    x = np.ascontiguousarray(
        np.stack(
            [
                src[k % 2][t : t + 224, s : s + 224]
                for k, (t, s) in enumerate(zip(rng.integers(0, 200, 48), rng.integers(0, 400, 48)))
            ]
        )
    )
    ops, args = R.sample_ops(
        np.random.default_rng(7), len(x), R.RandAugmentSpec.parse("rand-m9-mstd0.5-inc1")
    )
    ref = x.copy()
    for k in range(len(x)):
        for layer in range(ops.shape[1]):
            if ops[k, layer] != R.NO_OP:
                R.apply_op(ref[k], ops[k, layer], args[k, layer], FILL, bicubic)
    gpu = torch.from_numpy(x).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = rand_augment_on_device(gpu, ops, args, FILL, bicubic)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert np.array_equal(out.cpu().numpy(), ref)


@pytest.mark.parametrize("degrees", [27.31, -13.7, 0.4])
def test_full_size_rotation_equals_pillow(degrees):
    """224 px photos: ~150k interpolated values each, so float64 rounding slips would show."""
    src = load_sample_images().images
    x = np.ascontiguousarray(np.stack([src[0][100:324, 200:424], src[1][150:374, 50:274]]))
    ops = np.full((2, 1), R.ROTATE)
    out = rand_augment_on_device(torch.from_numpy(x.copy()), ops, np.full((2, 1), degrees), FILL).numpy()
    for k in range(2):
        ref = Image.fromarray(x[k]).rotate(degrees, resample=Image.BICUBIC, fillcolor=tuple(FILL.tolist()))
        assert np.array_equal(out[k], np.asarray(ref))
