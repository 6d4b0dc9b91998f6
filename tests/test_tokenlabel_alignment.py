"""Acceptance: after the real loader's random crops and flips, the dense token-label targets
point at the same source locations as the image crop, for square and non-square images."""

from __future__ import annotations

import pytest
import torch
from data_helpers import coordinate_beton, coordinate_store, data_config

from rmt_dist.data import build_train_loader
from rmt_dist.tokenlabel.loader import TokenLabelTrainLoader
from rmt_dist.tokenlabel.store import StoreMeta

MAP_H, MAP_W = 6, 9  # the "teacher" map: non-square on purpose
CLASSES = MAP_H * MAP_W  # class id of cell (r, c) = r * MAP_W + c
SIZES = [(96, 160), (128, 128), (160, 96)]  # (height, width): landscape, square, portrait


def token_labels(store, size: int, smoothing: float | None = 0.0) -> list[str]:
    """Overrides for token labeling from `store` on a `size` x `size` grid (data_config's `overrides`)."""
    out = [
        f"model.num_classes={CLASSES}",
        "model.token_label=true",
        "tokenlabel.enabled=true",
        f"tokenlabel.store={store}",
        f"tokenlabel.size={size}",
    ]
    return out if smoothing is None else [*out, f"tokenlabel.label_smoothing={smoothing}"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("coords")
    beton = coordinate_beton(root, SIZES, 24)
    store = coordinate_store(root / "train.tokenlabel", beton, MAP_H, MAP_W)
    return beton, store


@pytest.fixture(scope="module")
def centre_view_store(setup, tmp_path_factory):
    """The same maps, recorded as covering the centred square of each image (crop_pct 1):
    the map's cell (r, c) then lies at that square's (r, c), not the whole image's."""
    import shutil

    from rmt_dist.tokenlabel.view import TeacherView

    beton, store = setup
    other = tmp_path_factory.mktemp("centre") / "train.tokenlabel"
    shutil.copytree(store, other)
    from dataclasses import replace

    replace(StoreMeta.read(other), view=TeacherView("center_crop", 1.0).to_dict()).write(other)
    return beton, other


def test_dense_targets_follow_the_image_crop(setup):
    beton, store = setup
    cfg = data_config(
        beton,
        img_size=128,
        batch_size=8,
        scale=[0.2, 1.0],
        label_smoothing=0.0,
        num_workers=1,
        overrides=token_labels(store, 4),
    )
    loader = TokenLabelTrainLoader(build_train_loader(cfg), cfg)
    mean = torch.tensor(cfg.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.data.std).view(1, 3, 1, 1)
    flips_seen = 0
    for epoch in range(3):
        for images, (cls, dense) in loader.epoch(epoch):
            assert cls.shape == (8, CLASSES) and dense.shape == (8, 16, CLASSES)
            pixels = (images * std + mean) * 255  # back to the coordinate encoding
            cell = 128 // 4
            centres = (
                pixels[:, :2, cell // 2 :: cell, cell // 2 :: cell] / 255
            )  # (B, 2, 4, 4): x, y fractions
            top = dense.argmax(-1).view(-1, 4, 4)
            row, col = top // MAP_W, top % MAP_W
            x_label, y_label = (col + 0.5) / MAP_W, (row + 0.5) / MAP_H
            # within one label cell (plus the 1/255 coordinate quantisation)
            assert (x_label - centres[:, 0]).abs().max() <= 1 / MAP_W + 0.01
            assert (y_label - centres[:, 1]).abs().max() <= 1 / MAP_H + 0.01
            # flipped crops: x decreases along the row in the image, and so in the labels
            flipped = centres[:, 0, :, 0] > centres[:, 0, :, -1]
            flips_seen += int(flipped[:, 0].sum())
            assert torch.equal(
                (x_label[:, :, 0] > x_label[:, :, -1]) | (x_label[:, :, 0] == x_label[:, :, -1]),
                flipped | (x_label[:, :, 0] == x_label[:, :, -1]),
            )
    assert flips_seen > 0


def test_token_grid_must_match_the_model(setup):
    from rmt_dist.tokenlabel import TokenLabelStoreError

    beton, store = setup
    cfg = data_config(beton, img_size=128, batch_size=8, overrides=token_labels(store, 7, smoothing=None))
    with pytest.raises(TokenLabelStoreError, match="tokenlabel.size=4"):
        TokenLabelTrainLoader(build_train_loader(cfg), cfg)


def geometric_tlt_loader(beton, store, layers: int = 1):
    """The tlt order with RandAugment forced to Rotate, ShearX/Y, TranslateX/YRel at high magnitude."""
    from dataclasses import replace

    from rmt_dist.data.randaugment import GEOMETRIC_OPS

    cfg = data_config(
        beton,
        img_size=128,
        batch_size=8,
        scale=[0.2, 1.0],
        label_smoothing=0.0,
        num_workers=1,
        augment_order="tlt",
        interpolation="random",
        auto_augment=f"rand-m9-n{layers}-p1.0-mstd1.0-inc1",
        overrides=token_labels(store, 4),
    )
    base = build_train_loader(cfg)
    base.rand_augment = replace(base.rand_augment, ops=GEOMETRIC_OPS)
    return TokenLabelTrainLoader(base, cfg), cfg


# Nearest-cell resampling of the map (tlt's order-0 affine_label) moves a cell's content by up
# to half a source cell, which the op's linear part (shear up to 0.3, rotation across this
# test's non-square cells) stretches, on top of the token bin's half-cell argmax rounding.
# Measured worst case 1.25 cells; without the label ops the errors are several cells.
GEOMETRIC_TOLERANCE = 1.5


def misaligned_tokens(loader, cfg, epochs: int = 2) -> tuple[int, int]:
    """(token cells whose dense argmax is more than GEOMETRIC_TOLERANCE label cells from the
    image's decoded source coordinates, token cells checked), outside the RandAugment fill
    and inside the teacher's view (outside it the targets take its edge cells)."""
    mean = torch.tensor(cfg.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.data.std).view(1, 3, 1, 1)
    bad = checked = 0
    cell = 128 // 4
    for epoch in range(epochs):
        for images, _soft, meta in loader.base.epoch(epoch, with_meta=True):  # = loader.epoch, with meta
            _cls, dense = loader.targets(meta)
            pixels = (images * std + mean) * 255
            centres = pixels[:, :, cell // 2 :: cell, cell // 2 :: cell]  # (B, 3, 4, 4)
            x, y = centres[:, 0] / 255, centres[:, 1] / 255  # source-image fractions
            # The coordinate image has blue 0; the fill colour (timm's img_mean) has blue 104.
            valid = centres[:, 2] < 0.5
            top = dense.argmax(-1).view(-1, 4, 4)
            hw = meta["image_size"].numpy()
            rx0, ry0, rx1, ry1 = (
                torch.from_numpy(v).float()[:, None, None] for v in loader.view.rect(hw[:, 0], hw[:, 1]).T
            )
            x_label = rx0 + (top % MAP_W + 0.5) / MAP_W * (rx1 - rx0)  # map cell -> source fractions
            y_label = ry0 + (top // MAP_W + 0.5) / MAP_H * (ry1 - ry0)
            valid &= (x >= rx0) & (x <= rx1) & (y >= ry0) & (y <= ry1)
            # ... and where the token itself lies inside the view: the moved map keeps the view's
            # rectangle, so what an op moves out of it has no label (label_augment.py)
            box = meta["boxes"].float()  # (top, left, height, width) in stored pixels
            frac = (torch.arange(4).float() + 0.5) / 4
            x_out = (box[:, 1, None] + frac[None] * box[:, 3, None]) / torch.from_numpy(hw[:, 1]).float()[
                :, None
            ]
            y_out = (box[:, 0, None] + frac[None] * box[:, 2, None]) / torch.from_numpy(hw[:, 0]).float()[
                :, None
            ]
            valid &= (x_out[:, None, :] >= rx0) & (x_out[:, None, :] <= rx1)
            valid &= (y_out[:, :, None] >= ry0) & (y_out[:, :, None] <= ry1)
            off = ((x_label - x).abs() > GEOMETRIC_TOLERANCE * (rx1 - rx0) / MAP_W + 0.01) | (
                (y_label - y).abs() > GEOMETRIC_TOLERANCE * (ry1 - ry0) / MAP_H + 0.01
            )
            bad += int((off & valid).sum())
            checked += int(valid.sum())
    return bad, checked


@pytest.mark.parametrize("view", ["squash", "center_crop"])
def test_dense_targets_follow_geometric_randaugment_in_the_tlt_order(setup, centre_view_store, view):
    beton, store = setup if view == "squash" else centre_view_store
    loader, cfg = geometric_tlt_loader(beton, store)
    bad, checked = misaligned_tokens(loader, cfg)
    assert checked > 400
    assert bad == 0, (
        f"{bad} of {checked} token targets more than {GEOMETRIC_TOLERANCE} label cells from the image"
    )


def test_alignment_check_catches_image_only_geometric_ops(setup, monkeypatch):
    """The check above has teeth: with the label ops switched off (flip only), it fails."""
    import rmt_dist.tokenlabel.loader as tl_loader
    from rmt_dist.tokenlabel.label_augment import augment_maps

    monkeypatch.setattr(
        tl_loader,
        "augment_maps",
        lambda s, i, f, ops, args, *rest, **kw: augment_maps(s, i, f, None, None, *rest),
    )
    beton, store = setup
    loader, cfg = geometric_tlt_loader(beton, store)
    bad, checked = misaligned_tokens(loader, cfg)
    assert bad > checked // 10
