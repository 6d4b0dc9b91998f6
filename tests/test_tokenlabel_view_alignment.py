"""Acceptance: with a centre-crop teacher view (TokenLabeling's published maps cover only the centred
square), the crop-aligned targets still point at the source locations of the image crop, on landscape
and portrait images; and both generator views produce stores that pass the same check."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from data_helpers import coordinate_beton, coordinate_store, data_config

from rmt_dist.data import build_train_loader
from rmt_dist.tokenlabel import generate as gen
from rmt_dist.tokenlabel.loader import TokenLabelTrainLoader
from rmt_dist.tokenlabel.store import TokenLabelStore
from rmt_dist.tokenlabel.view import TeacherView

SIZES = [(96, 160), (160, 96)]  # (height, width): landscape, portrait; the view is their centre square
N = 24
TOKENS = 4


@pytest.fixture(scope="module")
def beton(tmp_path_factory):
    return coordinate_beton(tmp_path_factory.mktemp("viewcoords"), SIZES, N, mark_portrait=True)


# The centre square of each shape as (x0, y0, x1, y1) source fractions, written out rather than taken
# from view.py, so a wrong view mapping cannot agree with itself.
CENTRE_SQUARE = {(96, 160): (0.2, 0.0, 0.8, 1.0), (160, 96): (0.0, 0.2, 1.0, 0.8)}
WHOLE = {shape: (0.0, 0.0, 1.0, 1.0) for shape in SIZES}


def check_alignment(beton, store, num_classes: int, source_xy, tol: float, rects: dict) -> int:
    """Run the real train loader (default crop order); for every token whose image region lies inside
    the teacher's view, the dense target's top class must sit at the token's source location, within
    `tol` of the view's side (+ the 1/255 coordinate quantisation). source_xy(classes [T, T], h, w)
    gives a class's source (x, y) fractions. Returns how many tokens were checked."""
    cfg = data_config(
        beton,
        img_size=128,
        batch_size=8,
        scale=[0.2, 1.0],
        label_smoothing=0.0,
        num_workers=1,
        overrides=[
            f"model.num_classes={num_classes}",
            "model.token_label=true",
            "tokenlabel.enabled=true",
            f"tokenlabel.store={store}",
            f"tokenlabel.size={TOKENS}",
            "tokenlabel.label_smoothing=0.0",
        ],
    )
    loader = TokenLabelTrainLoader(build_train_loader(cfg), cfg)
    mean = torch.tensor(cfg.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.data.std).view(1, 3, 1, 1)
    checked, cell, eps = 0, 128 // TOKENS, 0.5 / 255
    for epoch in range(3):
        for images, (_cls, dense) in loader.epoch(epoch):
            px = (images * std + mean).clamp(0, 1)  # (B, 3, 128, 128): source x, y fractions; portrait flag
            tiles = px[:, :2].unfold(2, cell, cell).unfold(3, cell, cell).flatten(-2)  # (B, 2, T, T, cell^2)
            lo, hi, centre = tiles.amin(-1), tiles.amax(-1), tiles.mean(-1)
            top = dense.argmax(-1).view(-1, TOKENS, TOKENS)
            for b in range(len(images)):
                h, w = SIZES[1] if px[b, 2].mean() > 0.5 else SIZES[0]
                x0, y0, x1, y1 = rects[h, w]
                inside = (
                    (lo[b, 0] >= x0 - eps)
                    & (hi[b, 0] <= x1 + eps)
                    & (lo[b, 1] >= y0 - eps)
                    & (hi[b, 1] <= y1 + eps)
                )
                if not inside.any():
                    continue
                lx, ly = source_xy(top[b], h, w)
                dx = (lx - centre[b, 0]).abs()[inside].max()
                dy = (ly - centre[b, 1]).abs()[inside].max()
                assert dx <= tol * (x1 - x0) + 0.01 and dy <= tol * (y1 - y0) + 0.01, (
                    (h, w),
                    float(dx),
                    float(dy),
                )
                checked += int(inside.sum())
    return checked


def view_to_source(u, v, h: int, w: int):
    x0, y0, x1, y1 = CENTRE_SQUARE[h, w]
    return x0 + u * (x1 - x0), y0 + v * (y1 - y0)


MAP_H, MAP_W = 6, 9  # stored "teacher" map over the view: non-square on purpose


def test_centre_crop_maps_point_at_the_right_source_cells(beton, tmp_path):
    """The maps cover only each image's centre square (as the published ones); cell (r, c) = class r*MAP_W+c."""
    classes = MAP_H * MAP_W
    view = TeacherView("center_crop", 1.0)
    store = coordinate_store(tmp_path / "centre.tokenlabel", beton, MAP_H, MAP_W, view.to_dict())

    def source_xy(cls, h, w):
        return view_to_source((cls % MAP_W + 0.5) / MAP_W, (cls // MAP_W + 0.5) / MAP_H, h, w)

    assert check_alignment(beton, store, classes, source_xy, tol=1 / MAP_W, rects=CENTRE_SQUARE) > 200


GRID = 12  # the coordinate teacher's classes: a GRID x GRID grid over the whole source image
TEACHER_SIZE, TEACHER_STRIDE = 128, 8  # 16 x 16 maps


class CoordinateTeacher(torch.nn.Module):
    """Reads the coordinate image it is shown: at each map location, logit 20 - 4 d^2 for class (r, c),
    d = distance in grid cells from the source location it saw, so the top class is where it looked."""

    def forward(self, x):
        mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
        std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
        xy = F.avg_pool2d(x * std + mean, TEACHER_STRIDE)[:, :2]  # (B, 2, h, w) source fractions
        gx, gy = xy[:, 0] * GRID - 0.5, xy[:, 1] * GRID - 0.5
        rows, cols = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
        d2 = (gx[..., None] - cols.flatten()) ** 2 + (gy[..., None] - rows.flatten()) ** 2
        return 20 - 4 * d2  # (B, h, w, GRID * GRID)


@pytest.mark.parametrize("view_arg", ["squash", "center-crop"])
def test_both_generator_views_make_aligned_stores(beton, tmp_path, monkeypatch, view_arg):
    monkeypatch.setattr(gen, "build_teacher", lambda *a, **k: CoordinateTeacher())
    monkeypatch.setattr(gen, "per_location_logits", lambda model, x: model(x))
    monkeypatch.setattr(gen, "_beton_info", lambda b: (N, GRID * GRID))
    store = tmp_path / f"{view_arg}.tokenlabel"
    gen.generate(
        gen.parse_args(
            [
                str(beton),
                str(store),
                "--teacher",
                "coordinates",
                "--img-size",
                str(TEACHER_SIZE),
                "--topk",
                "3",
                "--batch-size",
                "8",
                "--workers",
                "1",
                "--device",
                "cpu",
                "--view",
                view_arg,
            ]
        )
    )
    meta = TokenLabelStore(store).meta
    view = TeacherView.from_dict(meta.view)
    assert view.kind == view_arg.replace("-", "_") and (meta.map_h, meta.map_w) == (16, 16)

    def source_xy(cls, h, w):  # the class is a source location already
        return (cls % GRID + 0.5) / GRID, (cls // GRID + 0.5) / GRID

    # a class cell plus a teacher cell (16 per view side) of slack
    rects = CENTRE_SQUARE if view_arg == "center-crop" else WHOLE
    x0, _, x1, _ = rects[96, 160]
    tol = (1 / GRID) / (x1 - x0) + 1 / 16
    assert check_alignment(beton, store, GRID * GRID, source_xy, tol=tol, rects=rects) > 200
