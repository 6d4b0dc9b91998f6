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


# --- Coordinate-encoded images and label stores (the token-label alignment tests) ---------


def coordinate_image(h: int, w: int, mark_portrait: bool = False) -> np.ndarray:
    """R encodes x, G encodes y, both as fractions of the image side (pixel centres); with
    `mark_portrait`, B is 255 on portrait images and 0 otherwise."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.round((np.arange(w) + 0.5) / w * 255)[None, :]
    img[..., 1] = np.round((np.arange(h) + 0.5) / h * 255)[:, None]
    if mark_portrait:
        img[..., 2] = 255 if h > w else 0
    return img


def coordinate_beton(root: Path, sizes: list[tuple[int, int]], n: int, mark_portrait: bool = False) -> Path:
    """root/train.beton of n lossless coordinate images (one class), sample k of shape
    sizes[k % len(sizes)] (height, width)."""
    from rmt_dist.data.convert import convert

    folder = root / "images" / "c0"
    folder.mkdir(parents=True)
    for k in range(n):
        Image.fromarray(coordinate_image(*sizes[k % len(sizes)], mark_portrait)).save(folder / f"{k:03d}.png")
    beton = root / "train.beton"
    convert(root / "images", beton, max_resolution=None, compress_probability=0.0, workers=1)
    return beton


def coordinate_store(store: Path, beton: Path, map_h: int, map_w: int, view: dict | None = None) -> Path:
    """A complete token-label store for `beton` whose top class at map cell (r, c) is r * map_w + c
    for every sample (top-3 logits 10, 1, 0.5), covering `view` (view.py; None: squash)."""
    from rmt_dist.data import beton_fingerprint, read_meta
    from rmt_dist.tokenlabel.store import StoreMeta

    n, classes = int(read_meta(beton)["num_samples"]), map_h * map_w
    r, c = np.meshgrid(np.arange(map_h), np.arange(map_w), indexing="ij")
    top = (r * map_w + c).astype(np.int16)
    indices = np.stack([top, (top + 1) % classes, (top + 2) % classes], -1)[None].repeat(n, 0)
    scores = np.broadcast_to(np.array([10.0, 1.0, 0.5], np.float16), indices.shape).copy()
    store.mkdir(parents=True)
    np.save(store / "scores.npy", scores)
    np.save(store / "indices.npy", indices)
    StoreMeta(
        teacher="coordinates",
        teacher_checkpoint=None,
        img_size=0,
        topk=3,
        map_h=map_h,
        map_w=map_w,
        num_classes=classes,
        beton=str(beton),
        beton_fingerprint=beton_fingerprint(beton),
        num_samples=n,
        complete=True,
        view=view,
    ).write(store)
    return store


def interrupt_on_call(fn, n: int):
    """`fn`, except that its n-th call raises KeyboardInterrupt (a preemption mid-run); the
    wrapper's `calls` counts calls, and setting it past n lets every later call through."""

    def wrapper(*args, **kwargs):
        wrapper.calls += 1
        if wrapper.calls == n:
            raise KeyboardInterrupt("simulated preemption")
        return fn(*args, **kwargs)

    wrapper.calls = 0
    return wrapper
