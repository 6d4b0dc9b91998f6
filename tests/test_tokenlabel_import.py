"""Importing TokenLabeling's published label maps: exact, resumable, and refusing bad files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import interrupt_on_call, make_odd_image_folder

from rmt_dist.data import read_meta
from rmt_dist.data.convert import convert
from rmt_dist.data.sources import read_source_paths
from rmt_dist.tokenlabel import TokenLabelStore, TokenLabelStoreError
from rmt_dist.tokenlabel import import_tlt as imp

CLASSES = ("ant", "bee", "cat", "dog", "eel", "fox")
K, H, W = 5, 4, 3  # non-square map: a transposed read shows


def write_tlt_tree(
    root: Path, rel_paths: list[str], labels: np.ndarray, seed: int = 0
) -> dict[str, torch.Tensor]:
    """The published format: torch.save(float16 [2, k, H, W]) at <class dir>/<stem>.pt; [0] sorted top-k
    logits, [1] distinct class indices as float16, the image's label first at most locations."""
    rng = np.random.default_rng(seed)
    tree = {}
    for rel, label in zip(rel_paths, labels):
        scores = np.sort(rng.normal(0, 4, (K, H, W)), axis=0)[::-1].astype(np.float16)
        idx = np.stack([rng.permutation(len(CLASSES))[:K] for _ in range(H * W)], -1).reshape(K, H, W)
        first = rng.random((H, W)) < 0.8
        for r, c in zip(*np.nonzero(first)):  # put the label first (swap it in)
            col = list(idx[:, r, c])
            j = col.index(label) if label in col else 0
            col[j], col[0] = col[0], label
            idx[:, r, c] = col
        t = torch.from_numpy(np.stack([scores, idx.astype(np.float16)]))
        path = root / imp.tlt_label_path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(t, path)
        tree[rel] = t
    return tree


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tlt")
    make_odd_image_folder(root / "train", classes=CLASSES, per_class=2)
    beton = root / "train.beton"
    convert(root / "train", beton, workers=1)
    meta = read_meta(beton)
    rel = read_source_paths(beton, meta)
    from rmt_dist.data.decode import BetonImages

    labels = BetonImages(str(beton)).labels
    tree = write_tlt_tree(root / "labels", rel, labels)
    return root, beton, rel, tree


def run(label_root, beton, store, *extra):
    return imp.import_tlt(
        imp.parse_args([str(label_root), str(beton), str(store), "--chunk-size", "4", *extra])
    )


@pytest.fixture(scope="module")
def full_store(data, tmp_path_factory):
    root, beton, _, _ = data
    store = tmp_path_factory.mktemp("stores") / "full.tokenlabel"
    run(root / "labels", beton, store, "--workers", "2")
    return store


def test_store_equals_the_published_maps_sample_by_sample(data, full_store):
    _, beton, rel, tree = data
    st = TokenLabelStore(full_store, beton=beton, num_classes=len(CLASSES))
    assert st.meta.num_samples == len(rel) == 15 and st.meta.complete
    assert (st.meta.map_h, st.meta.map_w, st.meta.topk) == (H, W, K)
    assert st.meta.view == {"kind": "center_crop", "crop_pct": 1.0} and st.meta.img_size == 576
    assert st.meta.source.startswith("tlt:") and st.meta.fallback_samples == 0
    assert not (full_store / "parts").exists()
    for i, p in enumerate(rel):
        t = tree[p]
        assert np.array_equal(st.scores[i], t[0].permute(1, 2, 0).numpy()), p
        assert np.array_equal(st.indices[i], t[1].permute(1, 2, 0).numpy().astype(np.int16)), p
        assert st.scores.dtype == np.float16 and st.indices.dtype == np.int16
    # what tlt trains on (tlt/data/mixup.py get_featuremaps): the k logits scattered into a dense
    # [C, H, W] map, 0 elsewhere; targets.py builds the same map from the store
    from rmt_dist.tokenlabel.targets import dense_score_maps

    raw = torch.stack([tree[p] for p in rel]).float()
    tlt_maps = torch.zeros(len(rel), len(CLASSES), H, W).scatter_(1, raw[:, 1].long(), raw[:, 0])
    ours = dense_score_maps(
        torch.from_numpy(np.array(st.scores)), torch.from_numpy(np.array(st.indices)), len(CLASSES)
    )
    assert torch.equal(ours, tlt_maps)


def test_interrupted_import_resumes_to_the_same_store(data, full_store, tmp_path, monkeypatch):
    root, beton, _, _ = data
    store = tmp_path / "resumed.tokenlabel"
    crash_on_third = interrupt_on_call(imp.import_chunk, 3)
    monkeypatch.setattr(imp, "import_chunk", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run(root / "labels", beton, store, "--workers", "1")
    assert len(list((store / "parts").glob("chunk_*.npz"))) == 2
    with pytest.raises(TokenLabelStoreError, match="incomplete.*import_tlt"):
        TokenLabelStore(store)
    crash_on_third.calls = 3  # past the crash: the rest go through, counted
    run(root / "labels", beton, store, "--workers", "1")
    assert crash_on_third.calls - 3 == 4 - 2, "finished chunks are not read again"
    a, b = TokenLabelStore(full_store), TokenLabelStore(store)
    assert np.array_equal(a.scores, b.scores) and np.array_equal(a.indices, b.indices)
    assert json.loads((store / "meta.json").read_text()) == {
        **json.loads((full_store / "meta.json").read_text())
    }


def test_resuming_with_another_chunk_size_names_both_sizes_and_the_fix(
    data, full_store, tmp_path, monkeypatch, capsys
):
    root, beton, _, _ = data
    store = tmp_path / "rechunked.tokenlabel"
    real = imp.import_chunk
    monkeypatch.setattr(imp, "import_chunk", interrupt_on_call(real, 2))
    with pytest.raises(KeyboardInterrupt):
        run(root / "labels", beton, store, "--workers", "1")
    monkeypatch.setattr(imp, "import_chunk", real)
    capsys.readouterr()
    assert (
        imp.main([str(root / "labels"), str(beton), str(store), "--chunk-size", "8", "--workers", "1"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "chunks of 4, not --chunk-size 8" in err and "resume with --chunk-size 4" in err, err
    run(root / "labels", beton, store, "--workers", "1")
    a, b = TokenLabelStore(full_store), TokenLabelStore(store)
    assert np.array_equal(a.scores, b.scores) and np.array_equal(a.indices, b.indices)
    # once complete the chunk size no longer matters
    assert (
        imp.main([str(root / "labels"), str(beton), str(store), "--chunk-size", "8", "--workers", "1"]) == 0
    )
    assert "already complete" in capsys.readouterr().out


REPEATED = torch.arange(K, dtype=torch.float32)[:, None, None].expand(K, H, W).clone()
REPEATED[4, 2, 1] = 0  # cell (2, 1) names class 0 twice: it would count double in the dense target


def broken_tree(data, tmp_path, sample: int, tensor) -> tuple[Path, str]:
    root, _, rel, _ = data
    labels = tmp_path / "labels"
    shutil.copytree(root / "labels", labels)
    path = labels / imp.tlt_label_path(rel[sample])
    if tensor is None:
        path.unlink()
    else:
        torch.save(tensor, path)
    return labels, str(path)


def cli_error(capsys, *argv) -> str:
    assert imp.main([*map(str, argv), "--chunk-size", "4", "--workers", "1"]) == 2
    err = capsys.readouterr().err.split("\r")[-1]  # after the progress bar (also stderr, \r-separated)
    lines = [line for line in err.splitlines() if line.strip() and "file/s" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize(
    "bad, reason",
    [
        (None, "missing"),
        (
            torch.zeros(2, K, H + 1, W, dtype=torch.float16),
            f"wrong shape: [2, 5, {H + 1}, {W}], expected [2, 5, {H}, {W}]",
        ),
        (
            torch.stack([torch.zeros(K, H, W), torch.full((K, H, W), 6.0)]).half(),
            "bad class index: 6 is not an integer in 0..5",
        ),
        (
            torch.stack([torch.zeros(K, H, W), torch.full((K, H, W), 1.5)]).half(),
            "bad class index: 1.5 is not an integer",
        ),
        (
            torch.stack([torch.zeros(K, H, W), REPEATED]).half(),
            "repeated class index: cell (row 2, col 1) lists class 0 twice in its top-5",
        ),
    ],
)
def test_unusable_file_is_a_one_line_error_naming_the_file_and_the_fix(data, tmp_path, capsys, bad, reason):
    _, beton, _, _ = data
    labels, path = broken_tree(data, tmp_path, 6, bad)
    store = tmp_path / "s.tokenlabel"
    err = cli_error(capsys, labels, beton, store)
    assert f"{path}: {reason}" in err and "--allow-missing" in err and "1 of 15" in err, err
    assert (store / "problems.tsv").read_text().count("\n") == 2
    assert not (store / "scores.npy").exists() and not StoreMetaComplete(store)
    # good chunks were kept: after the fix only the bad one is read
    shutil.copy(data[0] / "labels" / imp.tlt_label_path(data[2][6]), path)
    assert len(list((store / "parts").glob("chunk_*.npz"))) == 3
    run(labels, beton, store, "--workers", "1")
    assert TokenLabelStore(store).meta.complete and not (store / "problems.tsv").exists()


def StoreMetaComplete(store: Path) -> bool:
    return json.loads((store / "meta.json").read_text())["complete"]


def test_allow_missing_trains_those_samples_on_their_ground_truth(data, tmp_path, caplog):
    from rmt_dist.tokenlabel.targets import crop_aligned_targets

    _, beton, rel, _ = data
    labels, path = broken_tree(data, tmp_path, 6, None)
    store = tmp_path / "s.tokenlabel"
    run(labels, beton, store, "--allow-missing")
    st = TokenLabelStore(store)
    assert st.meta.complete and st.meta.fallback_samples == 1
    assert "1 samples had no usable label file" in caplog.text  # the training log says so
    lines = (store / "fallback.tsv").read_text().splitlines()
    assert lines[1] == f"6\t{path}\tmissing"
    label = CLASSES.index(rel[6].split("/")[0])
    sc, ix = st.gather(np.array([6]))
    cls, dense = crop_aligned_targets(
        torch.from_numpy(sc),
        torch.from_numpy(ix),
        torch.tensor([[0.1, 0.2, 0.9, 0.7]]),
        torch.tensor([False]),
        len(CLASSES),
        2,
        smoothing=0.0,
    )
    assert cls.argmax() == label and cls[0, label] > 0.999 and (dense[0, :, label] > 0.999).all()
    # without the flag the fallback chunk is read again and the import fails on the file
    with pytest.raises(TokenLabelStoreError):
        TokenLabelStore(store, num_classes=7)
    shutil.rmtree(store)
    with pytest.raises(TokenLabelStoreError, match="missing"):
        run(labels, beton, store)


def test_beton_without_recorded_paths_says_how_to_get_them(data, tmp_path, capsys):
    root, beton, rel, _ = data
    old = tmp_path / "old.beton"
    shutil.copy(beton, old)
    meta = read_meta(beton)
    meta.pop("paths")
    Path(f"{old}.meta.json").write_text(json.dumps(meta))
    err = cli_error(capsys, root / "labels", old, tmp_path / "s.tokenlabel")
    assert str(old) in err and "--record-paths" in err and "--paths FILE" in err
    listing = tmp_path / "paths.txt"
    listing.write_text("".join(f"{p}\n" for p in rel))
    run(root / "labels", old, tmp_path / "s.tokenlabel", "--paths", str(listing))
    assert TokenLabelStore(tmp_path / "s.tokenlabel").meta.complete


def test_maps_in_another_class_order_are_refused(data, tmp_path, capsys):
    root, beton, rel, tree = data
    shifted = tmp_path / "labels"
    for p, t in tree.items():
        t = t.clone()
        t[1] = (t[1] + 1) % len(CLASSES)
        (shifted / imp.tlt_label_path(p)).parent.mkdir(parents=True, exist_ok=True)
        torch.save(t, shifted / imp.tlt_label_path(p))
    store = tmp_path / "s.tokenlabel"
    err = cli_error(capsys, shifted, beton, store)
    assert "class order" in err and not (store / "scores.npy").exists()


def test_tlt_naming_rule():
    assert imp.tlt_label_path("n01440764/n01440764_10026.JPEG") == "n01440764/n01440764_10026.pt"
    assert imp.tlt_label_path("train/n0/a.b.JPEG") == "n0/a.pt"  # cut at the first dot, as tlt does


def test_a_store_matched_with_another_path_list_is_not_resumed_and_overwrite_starts_afresh(
    data, full_store, tmp_path, capsys
):
    """Resuming with another --paths list would mix rows matched two ways; --overwrite always
    starts afresh, so a refused import can be fixed and re-run (review)."""
    root, beton, rel, _ = data
    store = tmp_path / "s.tokenlabel"
    swapped = tmp_path / "paths.txt"  # two images of one class swapped: same classes, other rows
    order = list(rel)
    order[0], order[1] = order[1], order[0]
    swapped.write_text("".join(f"{p}\n" for p in order))
    run(root / "labels", beton, store, "--paths", str(swapped), "--workers", "1")
    err = cli_error(capsys, root / "labels", beton, store)  # the recorded list now
    assert "other inputs" in err and "--overwrite" in err
    run(root / "labels", beton, store, "--overwrite", "--workers", "1")
    assert np.array_equal(np.load(store / "scores.npy"), np.load(full_store / "scores.npy"))


def test_more_classes_than_float16_indices_can_name_are_refused(data, tmp_path, monkeypatch, capsys):
    root, beton, rel, labels = data
    real = imp._beton
    monkeypatch.setattr(imp, "_beton", lambda b, p: (lambda n, c, r, lab: (n, 2049, r, lab))(*real(b, p)))
    err = cli_error(capsys, root / "labels", beton, tmp_path / "s.tokenlabel")
    assert "2049 classes" in err and "float16" in err


def test_file_names_with_tabs_line_breaks_and_odd_bytes_keep_the_reports_one_row_each(tmp_path, capsys):
    """A line break cannot be one line of BETON.paths.txt: convert skips that file with the
    reason. A tab or non-UTF-8 bytes go into the paths list, and problems.tsv / fallback.tsv
    escape them (store.tsv_field): one row per file, three fields, read back to the name."""
    import os

    from data_helpers import smooth_image, write_jpeg

    from rmt_dist.data.decode import BetonImages
    from rmt_dist.tokenlabel.store import read_tsv_field

    rng = np.random.default_rng(0)
    src = tmp_path / "train"
    for c in CLASSES:
        write_jpeg(src / c / f"{c}_0.JPEG", smooth_image(rng, 40, 48))
    odd = ["tab\there.JPEG", os.fsdecode(b"bytes\xff.JPEG"), "back\\slash.JPEG"]
    for name in [*odd, "line\nbreak.JPEG"]:
        write_jpeg(src / CLASSES[0] / name, smooth_image(rng, 40, 48))
    beton = tmp_path / "train.beton"
    convert(src, beton, workers=1)
    meta = read_meta(beton)
    assert [Path(s["path"]).name for s in meta["skipped"]] == ["line\nbreak.JPEG"]
    assert "line break" in meta["skipped"][0]["reason"]
    rel = read_source_paths(beton, meta)
    assert len(rel) == len(CLASSES) + 3 and {f"{CLASSES[0]}/{n}" for n in odd} <= set(rel)

    labels = tmp_path / "labels"
    write_tlt_tree(labels, rel, BetonImages(str(beton)).labels)
    for n in odd:
        (labels / imp.tlt_label_path(f"{CLASSES[0]}/{n}")).unlink()
    store = tmp_path / "s.tokenlabel"
    with pytest.raises(TokenLabelStoreError) as e:
        run(labels, beton, store, "--workers", "1")
    assert "\n" not in str(e.value) and "\t" not in str(e.value)

    def rows(path: Path) -> list[list[str]]:
        lines = path.read_bytes().decode("utf-8", "surrogateescape").split("\n")
        assert lines[0] == "sample\tfile\treason" and lines[-1] == ""
        return [[read_tsv_field(f) for f in line.split("\t")] for line in lines[1:-1]]

    want = sorted(str(labels / imp.tlt_label_path(f"{CLASSES[0]}/{n}")) for n in odd)
    listed = rows(store / "problems.tsv")
    assert all(len(r) == 3 and r[2] == "missing" for r in listed), listed
    assert sorted(r[1] for r in listed) == want
    run(labels, beton, store, "--workers", "1", "--allow-missing")
    fallback = rows(store / "fallback.tsv")
    assert sorted(r[1] for r in fallback) == want and TokenLabelStore(store).meta.fallback_samples == 3
    capsys.readouterr()
