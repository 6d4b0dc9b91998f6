"""`data.augment_order: tlt`: flip -> RandAugment on the whole stored image -> RandomResizedCrop,
with `data.interpolation: random` (tlt/data/label_transforms_factory.py), replayable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_helpers import data_config, digits_betons
from PIL import Image
from test_data_loader import denormalize

from rmt_dist.config import ConfigError, load_config
from rmt_dist.data import build_train_loader
from rmt_dist.data import randaugment as ra
from rmt_dist.data.decode import BetonImages

TLT = dict(
    augment_order="tlt",
    interpolation="random",
    auto_augment="rand-m9-mstd0.5-inc1",
    reprob=0.25,
    label_smoothing=0.1,
)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return digits_betons(tmp_path_factory.getbasetemp())


def _pil_op(img: Image.Image, op: int, arg: float, bicubic: bool, fill: tuple[int, ...]) -> Image.Image:
    """timm's (= tlt's) RandAugment image ops, straight from Pillow."""
    from timm.data import auto_augment as aa

    kw = dict(fillcolor=fill, resample=Image.BICUBIC if bicubic else Image.BILINEAR)
    if op == ra.POSTERIZE and int(arg) == 0:
        return img.point(lambda _: 0)  # Pillow >= 10 rejects 0 bits; the old meaning (randaugment.py)
    fn = {
        ra.ROTATE: aa.rotate,
        ra.SHEAR_X: aa.shear_x,
        ra.SHEAR_Y: aa.shear_y,
        ra.TRANSLATE_X: aa.translate_x_rel,
        ra.TRANSLATE_Y: aa.translate_y_rel,
    }.get(op)
    if fn is not None:
        return fn(img, arg, **kw)
    name = ra.OP_NAMES[op]
    fn = aa.NAME_TO_OP[name]
    if op in (ra.POSTERIZE, ra.SOLARIZE, ra.SOLARIZE_ADD):
        return fn(img, int(arg))
    if op in (ra.COLOR, ra.CONTRAST, ra.BRIGHTNESS, ra.SHARPNESS):
        return fn(img, arg)
    return fn(img)


def test_images_are_tlts_chain_on_the_whole_image(digits):
    cfg = data_config(*digits, **{**TLT, "reprob": 0.0, "label_smoothing": 0.0})
    loader = build_train_loader(cfg)
    im = BetonImages(str(digits[0]))
    fill = tuple(int(v) for v in ra.fill_color(cfg.data.mean))
    seen_filters, seen_flips = set(), 0
    for step, (x, _, meta) in enumerate(loader.epoch(0, with_meta=True)):
        got = denormalize(x, cfg)
        for k in range(x.shape[0]):
            s = int(meta["indices"][k])
            img = Image.fromarray(
                np.asarray(im.data[im.ptrs[s] : im.ptrs[s] + im.sizes[s]]).reshape(32, 32, 3)
            )
            if meta["flipped"][k]:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
                seen_flips += 1
            for op, arg, bic in zip(
                meta["ra_ops"][k].tolist(), meta["ra_args"][k].tolist(), meta["ra_bicubic"][k].tolist()
            ):
                if op != ra.NO_OP:
                    img = _pil_op(img, op, arg, bic, fill)
                    seen_filters.add(bic)
            t, left, h, w = meta["boxes"][k].tolist()
            bic = bool(meta["crop_bicubic"][k])
            want = img.crop((left, t, left + w, t + h)).resize(
                (32, 32), Image.BICUBIC if bic else Image.BILINEAR
            )
            np.testing.assert_array_equal(got[k], np.asarray(want), err_msg=f"sample {s}")
        if step == 2:
            break
    assert seen_filters == {True, False} and seen_flips > 0


def test_resume_mid_epoch_replays_the_tlt_order_bitwise(digits):
    cfg = data_config(*digits, **TLT)
    loader = build_train_loader(cfg, rank=1, world_size=2)
    full = list(loader.epoch(3, with_meta=True))
    tail = list(build_train_loader(cfg, rank=1, world_size=2).epoch(3, start_step=5, with_meta=True))
    assert len(tail) == len(full) - 5
    for (x1, y1, m1), (x2, y2, m2) in zip(full[5:], tail):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        for key in ("boxes", "flipped", "ra_ops", "ra_args", "ra_bicubic", "crop_bicubic"):
            assert torch.equal(m1[key], m2[key]), key
    assert not torch.equal(full[0][0], next(iter(loader.epoch(4)))[0])


def test_augment_order_and_random_interpolation_are_validated(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: {name: rmt_t}\nrun: {dir: runs/x}\ndata: {train: x.beton, augment_order: tlt_order}\n"
    )
    with pytest.raises(ConfigError, match="crop_first, tlt"):
        load_config(recipe)
    recipe.write_text(
        "model: {name: rmt_t}\nrun: {dir: runs/x}\ndata: {train: x.beton, interpolation: random}\n"
    )
    with pytest.raises(ConfigError, match="augment_order=tlt"):
        load_config(recipe)


def test_ops_computed_only_where_the_crop_needs_them_equal_the_whole_image():
    """decode_whole works back from the crop box (randaugment.source_window) and computes each
    op on its window only: inside the box, the result must be the whole-image result."""
    rng = np.random.default_rng(0)
    h, w = 97, 131
    base = np.asarray(
        Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    )
    base = base.copy()
    base[::7] = rng.integers(0, 256, base[::7].shape, dtype=np.uint8)  # some sharp detail too
    fill = ra.fill_color([0.485, 0.456, 0.406])
    spec = ra.RandAugmentSpec.parse("rand-m9-mstd0.5-inc1")
    for _ in range(150):
        ops = rng.integers(0, len(ra.OP_NAMES), 2)
        args = ra.level_to_arg(ops, rng.uniform(0, spec.magnitude_max, 2), rng.random(2) > 0.5, True)
        bicubic = rng.random(2) < 0.5
        top, left = int(rng.integers(0, h - 10)), int(rng.integers(0, w - 10))
        bh, bw = int(rng.integers(1, h - top + 1)), int(rng.integers(1, w - left + 1))
        full = base.copy()
        for op, arg, bic in zip(ops, args, bicubic):
            ra.apply_op(full, int(op), float(arg), fill, bool(bic))
        wins = [(top, top + bh, left, left + bw)]
        for op, arg in zip(ops[::-1], args[::-1]):
            wins.insert(0, ra.source_window(int(op), float(arg), h, w, *wins[0]))
        part = base.copy()
        for (op, arg, bic), win in zip(zip(ops, args, bicubic), wins[1:]):
            ra.apply_op(part, int(op), float(arg), fill, bool(bic), *win)
        np.testing.assert_array_equal(
            part[top : top + bh, left : left + bw],
            full[top : top + bh, left : left + bw],
            err_msg=f"{[ra.OP_NAMES[o] for o in ops]} {args} {bicubic}",
        )


@pytest.mark.parametrize("size", ["s", "b", "l"])
def test_starred_recipes_use_tlts_order_and_random_interpolation(size):
    from pathlib import Path

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    star = load_config(recipes / f"rmt_{size}_tokenlabel.yaml")
    plain = load_config(recipes / f"rmt_{size}.yaml")
    assert (star.data.augment_order, star.data.interpolation) == ("tlt", "random")
    assert (plain.data.augment_order, plain.data.interpolation) == ("crop_first", "bicubic")
