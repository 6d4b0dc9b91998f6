"""The embedded demo dataset: scikit-learn's handwritten digits as an ImageFolder and betons.

    python -m rmt_dist.data.digits OUT_DIR [--size 32]

writes OUT_DIR/images/{train,val}/<digit>/<n>.png (1797 real 8x8 scans, upscaled to
SIZE x SIZE RGB with a fixed colour map so the 3 channels differ), a deterministic
stratified 80/20 split, then OUT_DIR/train.beton and OUT_DIR/val.beton (val with the train
class map). Stored raw (no JPEG) since the images are tiny. Idempotent: finished parts are
kept, so a second run is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import report
from .errors import DataError

VAL_FRACTION = 0.2
SPLIT_SEED = 0


def _colourise(gray8: np.ndarray, size: int) -> np.ndarray:
    """8x8 intensities 0..16 -> (size, size, 3) uint8: ink blue->yellow on a dark background."""
    from PIL import Image

    t = (gray8 / 16.0).astype(np.float32)
    rgb = np.stack([40 + 215 * t, 30 + 190 * t**0.7, 90 + 60 * (1 - t)], axis=-1)
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))


def write_image_folder(out_dir: Path, size: int) -> tuple[Path, Path]:
    from PIL import Image
    from sklearn.datasets import load_digits

    root = out_dir / "images"
    done = root / ".complete"
    train_dir, val_dir = root / "train", root / "val"
    if done.exists() and done.read_text().strip() == f"size={size}":
        return train_dir, val_dir
    digits = load_digits()
    rng = np.random.default_rng(SPLIT_SEED)
    for label in range(10):
        members = np.flatnonzero(digits.target == label)
        members = members[rng.permutation(len(members))]
        n_val = int(round(len(members) * VAL_FRACTION))
        for split, chosen in (("val", members[:n_val]), ("train", members[n_val:])):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                Image.fromarray(_colourise(digits.images[i], size)).save(folder / f"{i:04d}.png")
    done.write_text(f"size={size}\n")
    return train_dir, val_dir


def prepare_digits(out_dir: str | Path, size: int = 32, workers: int | None = None) -> tuple[Path, Path]:
    """Build (if missing) OUT_DIR/train.beton and OUT_DIR/val.beton; return their paths."""
    from .convert import convert
    from .meta import meta_path

    if size < 8:
        raise DataError(f"--size {size}: must be >= 8")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_dir, val_dir = write_image_folder(out_dir, size)
    train, val = out_dir / "train.beton", out_dir / "val.beton"
    opts: dict[str, Any] = dict(max_resolution=None, compress_probability=0.0, workers=workers or 1)
    if not (train.exists() and meta_path(train).exists()):
        convert(train_dir, train, overwrite=True, **opts)
    if not (val.exists() and meta_path(val).exists()):
        convert(val_dir, val, classes=meta_path(train), overwrite=True, **opts)
    return train, val


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rmt_dist.data.digits", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    a = p.parse_args(argv)
    try:
        train, val = prepare_digits(a.out_dir, a.size)
    except DataError as e:
        return report(e)
    print(f"digits ready: {train} and {val}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
