"""Data loader throughput: our FFCV pipeline vs torchvision ImageFolder + DataLoader.

    python bench/loader.py [--images 768] [--batch 64] [--workers N] [--epochs 2] [--dir /tmp/rmt_bench_loader]

Data: real photos (scikit-learn's two 640x427 sample JPEGs) cut into N random crops of
ImageNet-like size (~330-427 x 440-640, 10 classes), saved as JPEG q90, converted with
the ImageNet defaults. Every pipeline reads the same images with the same number of
worker processes/threads (default: the CPUs this process may use), 224 px output:

- decode-only ceiling: libjpeg-turbo decode of the beton's JPEGs (libffcv, numba threads);
- ours, crop+flip: decode + RandomResizedCrop (Pillow-exact bicubic) + flip + normalise;
- ours, full recipe: + RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, mixup/cutmix,
  all on these CPUs (RandAugment in the decode workers: what a CPU-only run does);
- ours, full recipe, host side of a GPU run: `data.randaugment_on: device` (the default
  on CUDA), timing the loader's host stage alone (decode, crop, flip, and the batch plan
  with its RandAugment/erasing/mixup draws): the rate the CPUs of a GPU node sustain, while
  the device applies RandAugment, normalisation, erasing and mixup. The device stage is
  timed separately per batch (on CUDA when present, else on this CPU, for reference);
- ours, starred (tlt order, `data.augment_order: tlt`, `data.interpolation: random`): flip ->
  RandAugment on the whole stored image -> RandomResizedCrop, erasing 0.25, no mixup (token
  labeling), as a CPU run and as the host side of a GPU run (RandAugment always runs in the
  workers in this order; the device then normalises and erases);
- torchvision, crop+flip: ImageFolder + RandomResizedCrop (bicubic) + flip + ToTensor + Normalize;
- torchvision, full recipe: timm create_transform (same RandAugment/erasing) + timm Mixup.

Runs interleave (A B A B ...) and report the best epoch of each, so machine noise hits
all pipelines alike. Results go to docs/perf.md by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The schema's defaults (the official augmentations) for a 10-class model; the rest comes as overrides.
BENCH_RECIPE = Path(__file__).resolve().parent / "loader.yaml"


def make_photos(root: Path, n: int, seed: int = 0) -> Path:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder = root / "images"
    if (folder / ".complete").exists():
        return folder
    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    for i in range(n):
        src = photos[i % len(photos)]
        h = int(rng.integers(330, src.shape[0] + 1))
        w = int(rng.integers(440, src.shape[1] + 1))
        top, left = int(rng.integers(0, src.shape[0] - h + 1)), int(rng.integers(0, src.shape[1] - w + 1))
        crop = src[top : top + h, left : left + w]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out = folder / f"c{i % 10}" / f"{i:05d}.JPEG"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(crop)).save(out, quality=90)
    (folder / ".complete").write_text("ok\n")
    return folder


def bench_decode_only(beton: Path, workers: int) -> float:
    import numba
    from numba import get_thread_id, njit, prange

    from rmt_dist.data.decode import BetonImages, _imdecode

    im = BetonImages(str(beton))
    scratch = np.empty((numba.config.NUMBA_NUM_THREADS, im.max_pixels * 3), np.uint8)

    @njit(nogil=True, parallel=True)
    def decode_all(data, ptrs, sizes, heights, widths, scratch):
        for s in prange(ptrs.shape[0]):
            h, w = heights[s], widths[s]
            buf = scratch[get_thread_id(), : h * w * 3].reshape((h, w, 3))
            _imdecode(data[ptrs[s] : ptrs[s] + sizes[s]], buf, h, w, h, w, 0, 0, 1, 1, False, False)

    numba.set_num_threads(workers)
    decode_all(im.data, im.ptrs[:2], im.sizes[:2], im.heights[:2], im.widths[:2], scratch)  # compile
    t = time.perf_counter()
    decode_all(im.data, im.ptrs, im.sizes, im.heights, im.widths, scratch)
    return im.num_samples / (time.perf_counter() - t)


def ours_loader(
    beton: Path,
    batch: int,
    workers: int,
    full: bool,
    randaugment_on: str = "host",
    device: str = "cpu",
    starred: bool = False,
):
    from rmt_dist.config import load_config
    from rmt_dist.data import build_train_loader

    data = dict(
        train=str(beton),
        batch_size=batch,
        num_workers=workers,
        img_size=224,
        repeated_aug=False,
        randaugment_on=randaugment_on,
    )
    if not full:
        data.update(auto_augment=None, reprob=0.0, mixup=0.0, cutmix=0.0)
    if starred:
        data.update(augment_order="tlt", interpolation="random", mixup=0.0, cutmix=0.0)
    cfg = load_config(BENCH_RECIPE, [*(f"data.{k}={json.dumps(v)}" for k, v in data.items())])
    return build_train_loader(cfg, device=device)


def ours_epoch(
    beton: Path, batch: int, workers: int, full: bool, host_side_only: bool = False, starred: bool = False
):
    loader = ours_loader(beton, batch, workers, full, "device" if host_side_only else "host", starred=starred)
    if host_side_only:
        # as on a CUDA device: the device normalises, erases and mixes
        loader.placement = dataclasses.replace(loader.placement, finish="device")
    state = {"epoch": 0}

    def run() -> float:
        t = time.perf_counter()
        n = 0
        if host_side_only:
            for plan, _ in loader.host_stage(state["epoch"]):
                n += plan.size
        else:
            for x, _ in loader.epoch(state["epoch"]):
                n += x.shape[0]
        state["epoch"] += 1
        return n / (time.perf_counter() - t)

    return run


def device_stage_ms(beton: Path, batch: int, workers: int, device: str, repeats: int = 5) -> float:
    """Median ms per batch of the device stage of a GPU run (uint8 copy, RandAugment,
    normalise, erasing, mixup/cutmix), from the host stage's real batches."""
    import torch

    loader = ours_loader(beton, batch, workers, True, "device", device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = []
    stage = loader.host_stage(0)
    for k, (plan, buffer) in zip(range(repeats + 1), stage):
        sync()
        t = time.perf_counter()
        loader.device_stage(0, plan, buffer)
        sync()
        if k:  # the first batch pays for allocator warm-up
            times.append(1000 * (time.perf_counter() - t))
    stage.close()  # stops the producer thread
    return float(np.median(times))


def torchvision_epoch(folder: Path, batch: int, workers: int, full: bool):
    import torch
    from timm.data import auto_augment, create_transform
    from timm.data.mixup import Mixup
    from torchvision import datasets, transforms

    if full:
        posterize = auto_augment.posterize
        # Pillow >= 10 rejects 0 bits (timm's level 10); keep the old meaning so the run survives.
        auto_augment.NAME_TO_OP["PosterizeIncreasing"] = lambda img, bits, **kw: (
            posterize(img, bits) if bits > 0 else img.point(lambda _: 0)
        )
        tf = create_transform(
            224,
            is_training=True,
            auto_augment="rand-m9-mstd0.5-inc1",
            re_prob=0.25,
            re_mode="pixel",
            interpolation="bicubic",
        )
        mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)
    else:
        tf = transforms.Compose(
            [
                transforms.RandomResizedCrop(224, interpolation=transforms.InterpolationMode.BICUBIC),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )
        mix = None
    ds = datasets.ImageFolder(str(folder), tf)
    dl = torch.utils.data.DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=True,
        prefetch_factor=4,
    )

    def run() -> float:
        t = time.perf_counter()
        n = 0
        for x, y in dl:
            if mix is not None:
                x, y = mix(x, y)
            n += x.shape[0]
        return n / (time.perf_counter() - t)

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=768)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--epochs", type=int, default=2, help="measured epochs per pipeline (after one warm-up)")
    p.add_argument("--dir", default="/tmp/rmt_bench_loader")
    p.add_argument("--no-torchvision", action="store_true", help="skip the torchvision pipelines")
    a = p.parse_args()
    import ffcv
    import numba
    import torch
    import torchvision

    from rmt_dist.data.convert import convert

    root = Path(a.dir)
    folder = make_photos(root, a.images)
    beton = root / "train.beton"
    if not beton.exists():
        convert(folder, beton, workers=a.workers)
    print(
        f"{a.images} images, batch {a.batch}, {a.workers} workers, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, ffcv {ffcv.__version__}, numba {numba.__version__}, "
        f"cpus {len(os.sched_getaffinity(0))}",
        flush=True,
    )
    pipelines = {
        "ours crop+flip": ours_epoch(beton, a.batch, a.workers, full=False),
        "torchvision crop+flip": torchvision_epoch(folder, a.batch, a.workers, full=False),
        "ours full recipe": ours_epoch(beton, a.batch, a.workers, full=True),
        "ours full, GPU-run host side": ours_epoch(beton, a.batch, a.workers, full=True, host_side_only=True),
        "torchvision full recipe": torchvision_epoch(folder, a.batch, a.workers, full=True),
        "ours starred (tlt order)": ours_epoch(beton, a.batch, a.workers, full=True, starred=True),
        "ours starred, GPU-run host side": ours_epoch(
            beton, a.batch, a.workers, full=True, host_side_only=True, starred=True
        ),
    }
    if a.no_torchvision:
        pipelines = {k: v for k, v in pipelines.items() if not k.startswith("torchvision")}
    for run in pipelines.values():
        run()  # warm-up: numba compile, worker start, page cache
    best = {name: 0.0 for name in pipelines}
    ceiling = 0.0
    for _ in range(a.epochs):
        ceiling = max(ceiling, bench_decode_only(beton, a.workers))
        for name, run in pipelines.items():
            best[name] = max(best[name], run())
    print(f"{'decode-only ceiling':26s} {ceiling:8.0f} img/s")
    for name, v in best.items():
        print(f"{name:26s} {v:8.0f} img/s")
    for kind, name in (
        ("crop+flip", "ours crop+flip"),
        ("full recipe", "ours full recipe"),
        ("full recipe", "ours full, GPU-run host side"),
    ):
        ours, tv = best[name], best.get(f"torchvision {kind}")
        vs = f"/ torchvision {kind} = {ours / tv:.2f}x, " if tv else ""
        print(f"{name:30s}: {vs}/ decode-only = {ours / ceiling:.2f}")
    for starred, plain in (
        ("ours starred (tlt order)", "ours full recipe"),
        ("ours starred, GPU-run host side", "ours full, GPU-run host side"),
    ):
        print(
            f"{starred:30s}: / decode-only = {best[starred] / ceiling:.2f}, / {plain} = {best[starred] / best[plain]:.2f}"
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ms = device_stage_ms(beton, a.batch, a.workers, device)
    print(
        f"device stage of a GPU run (RandAugment + normalise + erasing + mix) on {device}: "
        f"{ms:.1f} ms per batch of {a.batch}"
    )


if __name__ == "__main__":
    main()
