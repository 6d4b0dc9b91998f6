"""Small on-disk image datasets with the oddities real ImageNet contains, for the data tests."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image


def smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random RGB image (JPEG round-trips it within a few levels, unlike noise)."""
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def write_jpeg(path: Path, pixels: np.ndarray, quality: int = 95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=quality)


def make_odd_image_folder(
    root: Path, classes: tuple[str, ...] = ("cat", "dog", "eel"), per_class: int = 4, seed: int = 0
) -> dict[str, object]:
    """ImageFolder with, besides normal JPEGs: a CMYK JPEG, a greyscale JPEG, a PNG named
    .JPEG (all kept as RGB), and a truncated, an empty and a non-image .JPEG (all skipped).
    Returns {"good": {path: (class, RGB pixels as written)}, "bad": {path: reason word}}."""
    rng = np.random.default_rng(seed)
    good: dict[str, tuple[str, np.ndarray]] = {}
    bad: dict[str, str] = {}
    for c in classes:
        for i in range(per_class):
            px = smooth_image(rng, int(rng.integers(40, 90)), int(rng.integers(40, 90)))
            p = root / c / f"{c}_{i}.JPEG"
            write_jpeg(p, px)
            good[str(p)] = (c, np.asarray(Image.open(p).convert("RGB")))
    c0, c1 = classes[0], classes[1]
    px = smooth_image(rng, 48, 64)
    p = root / c0 / "cmyk.JPEG"
    Image.fromarray(px).convert("CMYK").save(p, format="JPEG", quality=95)
    good[str(p)] = (c0, np.asarray(Image.open(p).convert("RGB")))
    p = root / c1 / "grey.JPEG"
    Image.fromarray(px).convert("L").save(p, format="JPEG", quality=95)
    good[str(p)] = (c1, np.asarray(Image.open(p).convert("RGB")))
    p = root / c1 / "png_named.JPEG"
    Image.fromarray(px).save(p, format="PNG")
    good[str(p)] = (c1, px)
    buf = io.BytesIO()
    Image.fromarray(smooth_image(rng, 64, 64)).save(buf, format="JPEG", quality=95)
    p = root / c0 / "truncated.JPEG"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    bad[str(p)] = "truncated"
    p = root / c0 / "empty.JPEG"
    p.write_bytes(b"")
    bad[str(p)] = "empty"
    p = root / c1 / "garbage.JPEG"
    p.write_bytes(b"this is not an image at all" * 10)
    bad[str(p)] = "decod"
    return {"good": good, "bad": bad}


def digits_betons(base: Path) -> tuple[Path, Path]:
    """The demo dataset's betons under `base` (built once, then reused: prepare_digits is idempotent)."""
    from rmt_dist.data.digits import prepare_digits

    return prepare_digits(base / "digits", size=32)


LOADER_RECIPE = Path(__file__).parent / "fixtures" / "loader.yaml"


def data_config(
    train: Path, val: Path | None = None, *, overrides: tuple[str, ...] | list[str] = (), **data: object
):
    """A Config for the loader tests: tests/fixtures/loader.yaml with `data.<key>=value` for each
    keyword, then `overrides` (key.sub=value, any section), validated like any recipe."""
    from rmt_dist.config import load_config

    data = {"train": str(train), "val": str(val) if val else None, **data}
    return load_config(LOADER_RECIPE, [*(f"data.{k}={json.dumps(v)}" for k, v in data.items()), *overrides])
