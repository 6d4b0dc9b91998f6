"""Our tlt-order label maps against TokenLabeling's own code (tlt 0.2.0 from PyPI, test-only).

tlt imports timm's `_pil_interp`, renamed `str_to_pil_interp` in timm 0.9; a one-line shim
restores the old name before the import. Compared with `label_augment.augment_maps(...,
convention="tlt")`, which uses tlt's conventions (cell-corner coordinates, ndimage's fill
test); the training default ("centre") differs from it on purpose (label_augment.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rmt_dist.data import randaugment as ra
from rmt_dist.tokenlabel.label_augment import augment_maps
from rmt_dist.tokenlabel.targets import crop_aligned_targets


@pytest.fixture(scope="module")
def tlt():
    import timm.data.transforms as timm_transforms

    if not hasattr(timm_transforms, "_pil_interp"):
        timm_transforms._pil_interp = timm_transforms.str_to_pil_interp
    pytest.importorskip("tlt")
    from tlt.data import label_transforms_factory, mixup, random_augment_label

    return random_augment_label, label_transforms_factory, mixup


def _label_fns(tra):
    return {
        ra.ROTATE: tra.rotate_label,
        ra.SHEAR_X: tra.shear_x_label,
        ra.SHEAR_Y: tra.shear_y_label,
        ra.TRANSLATE_X: tra.translate_x_rel_label,
        ra.TRANSLATE_Y: tra.translate_y_rel_label,
    }


def _random_case(rng, layers):
    s, k = int(rng.integers(6, 16)), 3  # >= 6: tlt keeps the ground truth in cell (0, 5)
    scores = (rng.random((1, s, s, k)) + 0.1).astype(np.float32)
    indices = np.stack([rng.permutation(50)[:k] for _ in range(s * s)]).reshape(1, s, s, k).astype(np.float32)
    ops = rng.choice(ra.GEOMETRIC_OPS, (1, layers))
    levels = rng.uniform(0, 10, (1, layers))
    args = ra.level_to_arg(ops, levels, rng.random((1, layers)) > 0.5, True)
    return scores, indices, ops, args, int(rng.integers(40, 600))


def _tlt_label(scores, indices):
    return torch.from_numpy(np.stack([scores[0].transpose(2, 0, 1), indices[0].transpose(2, 0, 1)]))


def test_each_geometric_label_op_is_bitwise_tlts(tlt):
    fns = _label_fns(tlt[0])
    rng = np.random.default_rng(0)
    for _ in range(200):
        scores, indices, ops, args, side = _random_case(rng, 1)
        ours_s, ours_i = augment_maps(
            scores,
            indices,
            np.array([False]),
            ops,
            args,
            np.array([side]),
            np.array([side]),
            np.array([[0.0, 0.0, 1.0, 1.0]]),
            convention="tlt",
        )
        ref = fns[int(ops[0, 0])](_tlt_label(scores, indices), float(args[0, 0])).numpy()
        assert np.array_equal(ref[0], ours_s[0].transpose(2, 0, 1)), ra.OP_NAMES[int(ops[0, 0])]
        assert np.array_equal(ref[1], ours_i[0].transpose(2, 0, 1)), ra.OP_NAMES[int(ops[0, 0])]


def test_flip_ops_crop_and_targets_match_tlts_chain_except_the_box_order(tlt, monkeypatch):
    """flip -> two geometric ops -> crop -> RoI-aligned targets, through tlt's transform objects
    and its get_labelmaps_with_coords; tlt is handed the transposed box so that its
    (y1, x1, y2, x2) reading gives the crop we take (our one fix)."""
    from PIL import Image

    tra, factory, mixup = tlt
    fns = _label_fns(tra)
    rng = np.random.default_rng(1)
    classes, size = 50, 4
    for _ in range(20):
        scores, indices, ops, args, side = _random_case(rng, 2)
        flip = bool(rng.random() < 0.5)
        top, left = int(rng.integers(0, side // 3)), int(rng.integers(0, side // 3))
        h, w = int(rng.integers(side // 3, side - top)), int(rng.integers(side // 3, side - left))
        img = Image.new("RGB", (side, side))
        label = _tlt_label(scores, indices)
        if flip:
            img, label = factory.RandomHorizontalFlipWithLabel(p=1.0)(img, label)
        for op, arg in zip(ops[0], args[0]):
            label = fns[int(op)](label, float(arg))
        crop = factory.RandomResizedCropAndInterpolationWithCoords(size=8)
        # Transposed on purpose: tlt reads its box as (y1, x1, y2, x2).
        monkeypatch.setattr(crop, "get_params", lambda *a, box=(left, top, w, h), **k: box)
        _, label = crop(img, label)
        label[-1, 0, 0, 5] = 0  # the ground-truth slot, as DatasetTokenLabel
        batch = torch.stack([label, label])  # B > 1: tlt squeezes the batch dimension away otherwise
        ref = mixup.get_labelmaps_with_coords(batch, classes, label_size=size, device="cpu")[0, :, 1:]

        ours_s, ours_i = augment_maps(
            scores,
            indices,
            np.array([flip]),
            ops,
            args,
            np.array([side]),
            np.array([side]),
            np.array([[0.0, 0.0, 1.0, 1.0]]),
            convention="tlt",
        )
        box = torch.tensor([[left / side, top / side, (left + w) / side, (top + h) / side]])
        cls, dense = crop_aligned_targets(
            torch.from_numpy(ours_s),
            torch.from_numpy(ours_i),
            box,
            torch.tensor([False]),
            classes,
            size,
            smoothing=0.0,
        )
        torch.testing.assert_close(cls[0], ref[:, 0], atol=2e-6, rtol=0)
        torch.testing.assert_close(dense[0], ref[:, 1:].T, atol=2e-6, rtol=0)


def test_training_convention_differs_from_tlt_by_at_most_half_a_cell(tlt):
    """The training default maps cell centres (tlt: corners) and fills by the image's edge: on a
    square image and map it moves content at most half a cell from where tlt puts it."""
    rng = np.random.default_rng(2)
    for _ in range(100):
        scores, _, ops, args, side = _random_case(rng, 1)
        s = scores.shape[1]
        r, c = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
        coords = np.stack([c, r, r], -1)[None].astype(np.float32)  # cell (col, row) as "indices"
        rect = np.array([[0.0, 0.0, 1.0, 1.0]])
        _, tlt_src = augment_maps(
            scores,
            coords,
            np.array([False]),
            ops,
            args,
            np.array([side]),
            np.array([side]),
            rect,
            convention="tlt",
        )
        _, our_src = augment_maps(
            scores, coords, np.array([False]), ops, args, np.array([side]), np.array([side]), rect
        )
        # index maps of the nearest cell: the two conventions pick cells at most one apart
        assert np.abs(tlt_src - our_src).max() <= 1
