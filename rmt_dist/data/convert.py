"""Convert an ImageFolder root or a `path<TAB>label` list into an FFCV .beton.

    python -m rmt_dist.data.convert SRC OUT.beton [--classes CLASSES.json]
        [--max-resolution N] [--jpeg-quality Q] [--compress-probability P]
        [--workers N] [--overwrite]

Two passes over the sources, both parallel with a progress bar (rate and ETA):
1. check: decode every file (CMYK, greyscale, palette and PNG-named-.JPEG become RGB);
   truncated, empty or undecodable files are skipped with a reason, never fatal;
2. write: FFCV's DatasetWriter stores the good samples (fields `image`, `label`).
The beton is written to a hidden temporary file beside OUT and renamed into place
last, so an interrupted run never leaves an OUT.beton that looks complete. The sidecar
OUT.beton.meta.json holds num_samples, classes {name: index}, skipped [{path, reason}],
fields, the settings, `fingerprint` (see meta.py) and `paths`: OUT.beton.paths.txt lists
each sample's source, `<class dir>/<file>` relative to SRC, one per line in sample order
(~45 MB for ImageNet train), so a label file, a bad sample or a question can be traced to
the image (the token-label importer matches TokenLabeling's maps through it).
A file whose name holds a line break (\\n or \\r) cannot be one line of that list: it is
skipped with that reason, like an undecodable file (listed in the meta's `skipped`).
`--record-paths` writes that list for a beton converted before paths were recorded, from
its unchanged SRC (no re-conversion: SRC's listing minus the meta's skipped files, checked
against the beton's count and labels).

ImageNet defaults: longest side <= 512 px, every image JPEG at quality 90. On the bench
photos (bench/loader.py: sklearn's sample photos cut to ~350x500) that stores 0.27 bytes
per pixel, i.e. ~48 GB for ImageNet-1k train (1.28 M images, mean ~400x350 px) if its
photos compressed alike; they are busier (the original JPEGs average ~110 KB, ~0.8 B/px),
so plan on 50-130 GB for train and 2-5 GB for val (not measured here: no ImageNet on the
dev machines). `--compress-probability 0.5` stores half as raw pixels (faster decode,
~3 B/px for those), `--max-resolution 256` shrinks the file ~2.5x at some accuracy cost.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..atomic import atomic_path, atomic_write
from ..errors import report
from .errors import DataError
from .images import BadImage, load_rgb
from .meta import beton_fingerprint, meta_path, write_json_atomic
from .sources import (
    Sample,
    bad_path_reason,
    check_labels,
    class_map_from_labels,
    encode_paths,
    list_samples,
    load_class_map,
    paths_file,
    relative_source_path,
    source_root,
)
from .verify import full_checksum

DEFAULT_MAX_RESOLUTION = 512
DEFAULT_JPEG_QUALITY = 90
DEFAULT_COMPRESS_PROBABILITY = 1.0


@dataclass(frozen=True)
class ConvertResult:
    beton: Path
    num_samples: int
    skipped: list[dict[str, str]]
    seconds: float


def usable_cpus() -> int:
    """CPUs this process may run on (SLURM/cgroup affinity), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _check_one(path: str) -> str | None:
    """None if the file decodes to an image, else the reason it cannot be used."""
    try:
        load_rgb(path)
    except BadImage as e:
        return str(e)
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    return None


def check_images(samples: list[Sample], workers: int) -> list[str | None]:
    paths = [s.path for s in samples]
    bar = dict(total=len(paths), desc="check", unit="img", dynamic_ncols=True)
    if workers <= 1:
        return [_check_one(p) for p in tqdm(paths, **bar)]
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
        return list(tqdm(pool.map(_check_one, paths, chunksize=64), **bar))


class _Images:
    """The indexable dataset FFCV's writer workers read: (RGB array, label) per sample.

    A file that was checked but fails now (changed during the run) must not raise: the
    writer would wait forever for the dead worker. It becomes a 1x1 placeholder that is
    counted, and the run then fails without publishing the beton.
    """

    def __init__(self, samples: list[Sample], classes: dict[str, int]) -> None:
        self.paths = [s.path for s in samples]
        self.labels = [classes[s.label] for s in samples]
        self.failures = mp.get_context("fork").Value("i", 0)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        try:
            return load_rgb(self.paths[i]), self.labels[i]
        except (BadImage, OSError):
            with self.failures.get_lock():
                self.failures.value += 1
            return np.zeros((1, 1, 3), np.uint8), self.labels[i]


def write_beton(
    out: Path,
    dataset: _Images,
    *,
    max_resolution: int | None,
    jpeg_quality: int,
    compress_probability: float,
    workers: int,
) -> None:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    fields = {
        "image": RGBImageField(
            write_mode="proportion",
            max_resolution=max_resolution,
            jpeg_quality=jpeg_quality,
            compress_probability=compress_probability,
        ),
        "label": IntField(),
    }
    writer = DatasetWriter(os.fspath(out), fields, num_workers=max(1, workers))
    print(f"write: {len(dataset)} samples -> {out.name}", file=sys.stderr, flush=True)
    # Fork start: the writer's workers inherit the dataset instead of pickling it.
    if mp.get_start_method(allow_none=True) not in (None, "fork"):
        raise DataError("the FFCV writer needs the 'fork' multiprocessing start method (Linux)")
    writer.from_indexed_dataset(dataset, chunksize=32)


def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    classes: str | os.PathLike | None = None,
    max_resolution: int | None = DEFAULT_MAX_RESOLUTION,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    compress_probability: float = DEFAULT_COMPRESS_PROBABILITY,
    workers: int | None = None,
    overwrite: bool = False,
) -> ConvertResult:
    """Convert SRC to OUT (see module docstring). Raises DataError on bad input."""
    start = time.perf_counter()
    src, out = Path(src), Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{out} already exists (pass --overwrite to replace it)")
    if not 1 <= jpeg_quality <= 100:
        raise DataError(f"--jpeg-quality {jpeg_quality}: must be in 1..100")
    if not 0.0 <= compress_probability <= 1.0:
        raise DataError(f"--compress-probability {compress_probability}: must be in [0, 1]")
    if max_resolution is not None and max_resolution < 8:
        raise DataError(f"--max-resolution {max_resolution}: must be >= 8 (or 0 for no limit)")
    if not out.parent.is_dir():
        raise DataError(f"{out.parent}: output folder does not exist (create it first)")
    workers = min(workers or usable_cpus(), usable_cpus())

    samples = list_samples(src)
    if classes is not None:
        class_map = load_class_map(Path(classes))
        check_labels(samples, class_map, Path(classes))
    else:
        class_map = class_map_from_labels([s.label for s in samples])

    root = source_root(src)
    rel_paths = [relative_source_path(s.path, root) for s in samples]
    reasons = check_images(samples, workers)
    reasons = [bad_path_reason(rel) or r for r, rel in zip(reasons, rel_paths)]
    good = [s for s, r in zip(samples, reasons) if r is None]
    good_rel = [rel for rel, r in zip(rel_paths, reasons) if r is None]
    skipped = [{"path": s.path, "reason": r} for s, r in zip(samples, reasons) if r is not None]
    if not good:
        raise DataError(f"{src}: none of the {len(samples)} files decodes to an image (first: {skipped[0]})")

    with atomic_path(out) as tmp:  # renamed last: OUT exists only once complete, and its meta with it
        dataset = _Images(good, class_map)
        write_beton(
            tmp,
            dataset,
            max_resolution=max_resolution,
            jpeg_quality=jpeg_quality,
            compress_probability=compress_probability,
            workers=workers,
        )
        if dataset.failures.value:
            raise DataError(f"{dataset.failures.value} files became unreadable during conversion; re-run")
        meta = {
            "num_samples": len(good),
            "num_classes": len(class_map),
            "classes": class_map,
            "skipped": skipped,
            "fields": {"image": "RGBImageField", "label": "IntField"},
            "source": str(src.resolve()),
            "settings": {
                "max_resolution": max_resolution,
                "jpeg_quality": jpeg_quality,
                "compress_probability": compress_probability,
            },
            "fingerprint": beton_fingerprint(tmp),
            "paths": _write_paths(out, good_rel),
            "checksum": full_checksum(tmp),  # every byte: python -m rmt_dist.data.verify checks it
        }
        write_json_atomic(meta_path(out), meta)
    return ConvertResult(out, len(good), skipped, time.perf_counter() - start)


def _write_paths(beton: Path, rel_paths: list[str]) -> dict[str, object]:
    """Write OUT.beton.paths.txt atomically; returns its meta.json record."""
    import hashlib

    data = encode_paths(rel_paths)
    path = paths_file(beton)
    atomic_write(path, data)
    return {"file": path.name, "count": len(rel_paths), "sha256": hashlib.sha256(data).hexdigest()}


def record_paths(src: str | os.PathLike, beton: str | os.PathLike) -> int:
    """Write the paths list of a beton converted before paths were recorded (see module docstring)."""
    from .decode import BetonImages
    from .meta import read_meta

    src, beton = Path(src), Path(beton)
    meta = read_meta(beton)
    if meta.get("paths") and paths_file(beton).is_file():
        raise DataError(f"{beton} already has its source paths ({paths_file(beton)}); nothing to do")
    samples = list_samples(src)
    root = source_root(src)
    skipped_tails: set[str] = set()
    for s in meta.get("skipped", []):
        parts = Path(s["path"]).parts
        skipped_tails.update(Path(*parts[i:]).as_posix() for i in range(len(parts)))
    kept = [(s, relative_source_path(s.path, root)) for s in samples]
    kept = [(s, rel) for s, rel in kept if rel not in skipped_tails and bad_path_reason(rel) is None]
    n = int(meta["num_samples"])
    if len(kept) != n:
        raise DataError(
            f"{src} now lists {len(kept)} usable images but {beton} has {n} samples (the folder "
            f"changed since conversion); re-convert with python -m rmt_dist.data.convert {src} {beton} --overwrite"
        )
    classes = meta["classes"]
    labels = BetonImages(str(beton)).labels
    wrong = [i for i, (s, _) in enumerate(kept) if classes.get(s.label) != int(labels[i])]
    if wrong:
        i = wrong[0]
        raise DataError(
            f"{kept[i][0].path} is class {kept[i][0].label!r} but sample {i} of {beton} has label "
            f"{int(labels[i])} ({len(wrong)} such samples: the folder changed since conversion); "
            f"re-convert with python -m rmt_dist.data.convert {src} {beton} --overwrite"
        )
    meta["paths"] = _write_paths(beton, [rel for _, rel in kept])
    write_json_atomic(meta_path(beton), meta)
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rmt_dist.data.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="ImageFolder root (SRC/<class>/<image>) or a `path<TAB>label` list file")
    p.add_argument(
        "out", help="output .beton (its meta file is OUT.meta.json, its source paths OUT.paths.txt)"
    )
    p.add_argument(
        "--classes", help="class map to reuse: a {name: index} JSON or the train split's .beton.meta.json"
    )
    p.add_argument(
        "--max-resolution",
        type=int,
        default=DEFAULT_MAX_RESOLUTION,
        help=f"resize so the longest side is at most N px; 0 = keep (default {DEFAULT_MAX_RESOLUTION})",
    )
    p.add_argument(
        "--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY, help=f"default {DEFAULT_JPEG_QUALITY}"
    )
    p.add_argument(
        "--compress-probability",
        type=float,
        default=DEFAULT_COMPRESS_PROBABILITY,
        help="fraction stored as JPEG, the rest raw pixels (default 1.0: all JPEG)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="processes (default: the CPUs this process may use)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument(
        "--record-paths",
        action="store_true",
        help="do not convert: write OUT.paths.txt (each sample's source path) for an existing OUT "
        "converted before paths were recorded, from its unchanged SRC",
    )
    a = p.parse_args(argv)
    if a.record_paths:
        try:
            n = record_paths(a.src, a.out)
        except DataError as e:
            return report(e)
        print(f"wrote {paths_file(a.out)}: {n} source paths")
        return 0
    try:
        r = convert(
            a.src,
            a.out,
            classes=a.classes,
            max_resolution=a.max_resolution or None,
            jpeg_quality=a.jpeg_quality,
            compress_probability=a.compress_probability,
            workers=a.workers,
            overwrite=a.overwrite,
        )
    except DataError as e:
        return report(e)
    size_mb = r.beton.stat().st_size / 2**20
    print(
        f"wrote {r.beton}: {r.num_samples} samples, {len(r.skipped)} skipped, {size_mb:.1f} MiB, "
        f"{r.seconds:.1f} s ({r.num_samples / max(r.seconds, 1e-9):.0f} img/s); meta {meta_path(r.beton)}"
    )
    for s in r.skipped[:10]:  # a name with a line break (skipped for that) is shown quoted, on one line
        print(f"  skipped {s['path'] if s['path'].isprintable() else repr(s['path'])}: {s['reason']}")
    if len(r.skipped) > 10:
        print(f"  ... and {len(r.skipped) - 10} more (see the meta file)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
