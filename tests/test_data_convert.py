"""Conversion: oddities kept or skipped with reasons, class maps, pixels, atomic output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_helpers import make_odd_image_folder, smooth_image, write_jpeg

from rmt_dist.data import beton_fingerprint, read_meta
from rmt_dist.data.convert import convert
from rmt_dist.data.decode import BatchDecoder, BetonImages
from rmt_dist.data.errors import DataError


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    info = make_odd_image_folder(root / "train")
    beton = root / "train.beton"
    convert(root / "train", beton, workers=2)
    return root, beton, info


def decode_full(beton: Path) -> list[np.ndarray]:
    """Every stored image at its stored size (box = whole image, no flip)."""
    images = BetonImages(str(beton))
    dec = BatchDecoder(images, 1)
    out = []
    for i in range(images.num_samples):
        h, w = int(images.heights[i]), int(images.widths[i])
        px = np.zeros((1, h, w, 3), np.uint8)
        dec.decode(np.array([i]), np.array([[0, 0, h, w]]), np.zeros(1, bool), px)
        out.append(px[0])
    return out


def test_counts_skips_and_class_map(odd):
    root, beton, info = odd
    meta = read_meta(beton)
    assert meta["num_samples"] == len(info["good"]) == 15
    assert meta["classes"] == {"cat": 0, "dog": 1, "eel": 2}
    assert {"num_samples", "classes", "skipped", "fields", "fingerprint"} <= meta.keys()
    reasons = {s["path"]: s["reason"] for s in meta["skipped"]}
    assert set(reasons) == set(info["bad"])
    for path, word in info["bad"].items():
        assert word in reasons[path], (path, reasons[path])
    assert not list(root.glob(".*tmp*")), "temporary files left behind"


def test_decoded_pixels_match_sources_including_cmyk_grey_png(odd):
    _, beton, info = odd
    images = BetonImages(str(beton))
    good = sorted(info["good"].items())  # ImageFolder order: class folders, then sorted file names
    decoded = decode_full(beton)
    assert len(decoded) == len(good)
    for (path, (cls, src)), got, label in zip(good, decoded, images.labels):
        assert got.shape == src.shape, path
        assert label == {"cat": 0, "dog": 1, "eel": 2}[cls]
        err = np.abs(got.astype(int) - src.astype(int))
        assert err.mean() < 2.5 and np.percentile(err, 99) <= 12, (path, err.mean())  # JPEG q90 re-encode


def test_val_reuses_train_classes_and_rejects_unknown_class(odd, tmp_path):
    _, beton, _ = odd
    rng = np.random.default_rng(1)
    for cls in ("eel", "dog"):
        write_jpeg(tmp_path / "val" / cls / "a.JPEG", smooth_image(rng, 40, 40))
    out = tmp_path / "val.beton"
    convert(tmp_path / "val", out, classes=f"{beton}.meta.json", workers=1)
    assert read_meta(out)["classes"] == {"cat": 0, "dog": 1, "eel": 2}
    assert sorted(BetonImages(str(out)).labels.tolist()) == [1, 2]
    write_jpeg(tmp_path / "val" / "yak" / "b.JPEG", smooth_image(rng, 40, 40))
    with pytest.raises(DataError, match="'yak'"):
        convert(tmp_path / "val", tmp_path / "val2.beton", classes=f"{beton}.meta.json", workers=1)
    assert not (tmp_path / "val2.beton").exists()


def test_list_file_with_integer_labels(odd, tmp_path):
    _, _, info = odd
    paths = sorted(info["good"])[:4]
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{p}\t{7 if i % 2 else 3}\n" for i, p in enumerate(paths)))
    out = tmp_path / "l.beton"
    convert(lst, out, workers=1)
    assert read_meta(out)["classes"] == {"3": 3, "7": 7}
    assert BetonImages(str(out)).labels.tolist() == [3, 7, 3, 7]


def test_overwrite_required_and_interrupted_write_leaves_nothing(odd, tmp_path, monkeypatch):
    root, beton, _ = odd
    with pytest.raises(DataError, match="--overwrite"):
        convert(root / "train", beton)
    import rmt_dist.data.convert as conv

    def crash(out, *a, **k):
        Path(out).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(conv, "write_beton", crash)
    with pytest.raises(KeyboardInterrupt):
        convert(root / "train", tmp_path / "x.beton", workers=1)
    assert list(tmp_path.iterdir()) == []


def test_cli_one_line_error_and_fingerprint(odd, tmp_path):
    root, beton, _ = odd
    r = subprocess.run(
        [sys.executable, "-m", "rmt_dist.data.convert", str(root / "nope"), str(tmp_path / "o.beton")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "nope" in r.stderr
    fp = beton_fingerprint(beton)
    assert fp == beton_fingerprint(beton) == json.loads(Path(f"{beton}.meta.json").read_text())["fingerprint"]
    other = tmp_path / "o.beton"
    convert(root / "train", other, workers=1, jpeg_quality=80)
    assert beton_fingerprint(other) != fp


def test_each_sample_source_path_is_recorded_in_order(odd):
    root, beton, info = odd
    from rmt_dist.data.sources import paths_file, read_source_paths

    meta = read_meta(beton)
    rel = read_source_paths(beton, meta)
    expected = [Path(p).relative_to(root / "train").as_posix() for p in sorted(info["good"])]
    assert rel == expected and rel[0] == "cat/cat_0.JPEG"
    assert meta["paths"]["file"] == paths_file(beton).name and meta["paths"]["count"] == len(rel)
    labels = BetonImages(str(beton)).labels
    assert [meta["classes"][r.split("/")[0]] for r in rel] == labels.tolist()


def test_record_paths_for_an_older_beton_and_stale_lists_are_refused(odd, tmp_path):
    import shutil

    from rmt_dist.data.convert import main as convert_main
    from rmt_dist.data.sources import paths_file, read_source_paths

    root, beton, _ = odd
    old = tmp_path / "old.beton"
    shutil.copy(beton, old)
    meta = read_meta(beton)
    want = read_source_paths(beton, meta)
    meta.pop("paths")
    Path(f"{old}.meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="--record-paths"):
        read_source_paths(old, read_meta(old))
    assert convert_main([str(root / "train"), str(old), "--record-paths"]) == 0
    assert read_source_paths(old, read_meta(old)) == want
    paths_file(old).write_text("".join(f"{p}\n" for p in reversed(want)))  # edited after conversion
    with pytest.raises(DataError, match="sha256"):
        read_source_paths(old, read_meta(old))
