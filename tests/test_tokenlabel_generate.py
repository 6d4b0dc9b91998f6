"""Token-label generation on a real beton: complete, resumable, and refusing bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from data_helpers import digits_betons, interrupt_on_call

from rmt_dist.tokenlabel import TokenLabelStore, TokenLabelStoreError
from rmt_dist.tokenlabel import generate as gen

TEACHER = "resnet10t"


@pytest.fixture(scope="module")
def betons(tmp_path_factory):
    return digits_betons(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.save({"model": timm.create_model(TEACHER, num_classes=10).state_dict()}, path)
    return path


def args(beton, store, ckpt, *extra):
    return gen.parse_args(
        [
            str(beton),
            str(store),
            "--teacher",
            TEACHER,
            "--checkpoint",
            str(ckpt),
            "--img-size",
            "64",
            "--topk",
            "3",
            "--batch-size",
            "64",
            "--workers",
            "1",
            "--chunk-size",
            "256",
            "--device",
            "cpu",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def full_store(betons, teacher_ckpt, tmp_path_factory):
    store = tmp_path_factory.mktemp("stores") / "full.tokenlabel"
    gen.generate(args(betons[0], store, teacher_ckpt))
    return store


def test_store_covers_every_sample_with_the_teachers_topk(full_store, betons, teacher_ckpt):
    st = TokenLabelStore(full_store, beton=betons[0], num_classes=10)
    n = st.meta.num_samples
    assert st.scores.shape == (n, 2, 2, 3) and st.indices.shape == (n, 2, 2, 3)
    assert not (full_store / "parts").exists()
    # scores are sorted top-k logits, indices valid classes
    s = np.asarray(st.scores, dtype=np.float32)
    assert (np.diff(s, axis=-1) <= 0).all()
    assert np.asarray(st.indices).min() >= 0 and np.asarray(st.indices).max() < 10
    # gather returns rows in the order asked for
    rows = np.array([5, 0, n - 1, 5])
    sc, ix = st.gather(rows)
    assert np.array_equal(sc[0], sc[3]) and np.array_equal(ix[2], np.asarray(st.indices[n - 1]))


def test_interrupted_generation_resumes_to_the_same_store(
    full_store, betons, teacher_ckpt, tmp_path, monkeypatch
):
    store = tmp_path / "resumed.tokenlabel"
    real = gen._label_chunk
    crash_on_third = interrupt_on_call(real, 3)
    monkeypatch.setattr(gen, "_label_chunk", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        gen.generate(args(betons[0], store, teacher_ckpt))
    assert len(list((store / "parts").glob("chunk_*.npz"))) == 2
    with pytest.raises(TokenLabelStoreError, match="incomplete"):
        TokenLabelStore(store)

    crash_on_third.calls = 3  # past the crash: the rest go through, counted
    gen.generate(args(betons[0], store, teacher_ckpt))
    total_chunks = -(-TokenLabelStore(full_store).meta.num_samples // 256)
    assert crash_on_third.calls - 3 == total_chunks - 2, "finished chunks are not redone"
    a, b = TokenLabelStore(full_store), TokenLabelStore(store)
    assert np.array_equal(a.scores, b.scores) and np.array_equal(a.indices, b.indices)


@pytest.mark.parametrize("legacy", [False, True])
def test_resuming_with_another_chunk_size_keeps_the_stores_own(
    full_store, betons, teacher_ckpt, tmp_path, monkeypatch, capsys, legacy
):
    """Finished chunks are numbered by the size they were cut with: a resume with a bigger
    --chunk-size once skipped rows no part held and failed on every re-run. It now keeps the
    recorded size (or, for parts written before it was recorded, the size read off a part)."""
    store = tmp_path / "rechunked.tokenlabel"
    real = gen._label_chunk
    crash_on_third = interrupt_on_call(real, 3)
    monkeypatch.setattr(gen, "_label_chunk", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        gen.generate(args(betons[0], store, teacher_ckpt))  # 256 per chunk, chunks 0 and 1 done
    if legacy:
        (store / "parts" / "chunk_size.txt").unlink()
    crash_on_third.calls = 3
    capsys.readouterr()
    gen.generate(args(betons[0], store, teacher_ckpt, "--chunk-size", "512"))
    out = capsys.readouterr().out
    assert "with its chunk size 256" in out and "not --chunk-size 512" in out, out
    a, b = TokenLabelStore(full_store), TokenLabelStore(store)
    assert np.array_equal(a.scores, b.scores) and np.array_equal(a.indices, b.indices)


def test_a_chunk_whose_topk_repeats_a_class_is_named_removed_and_redone(
    full_store, betons, teacher_ckpt, tmp_path, monkeypatch
):
    """A repeated class index in a cell would count twice in the dense target: consolidation
    names the sample, its image and the cell, removes the damaged chunk, and a re-run redoes it."""
    store = tmp_path / "repeat.tokenlabel"
    real = gen._label_chunk

    def damaged(*a, **k):
        out = real(*a, **k)
        if int(out["rows"][0]) == 256:  # chunk 1: sample 259, cell (1, 0) lists its top class twice
            out["indices"][3, 1, 0, 2] = out["indices"][3, 1, 0, 0]
        return out

    monkeypatch.setattr(gen, "_label_chunk", damaged)
    with pytest.raises(TokenLabelStoreError) as e:
        gen.generate(args(betons[0], store, teacher_ckpt))
    msg = str(e.value)
    assert "sample 259 (" in msg and "cell (row 1, col 0)" in msg and "twice" in msg and "re-run" in msg, msg
    assert not gen._part(store, 1).exists() and gen._part(store, 0).exists()
    monkeypatch.setattr(gen, "_label_chunk", real)
    gen.generate(args(betons[0], store, teacher_ckpt))
    a, b = TokenLabelStore(full_store), TokenLabelStore(store)
    assert np.array_equal(a.indices, b.indices)


def test_store_for_another_beton_is_refused(full_store, betons):
    with pytest.raises(TokenLabelStoreError, match="made for"):
        TokenLabelStore(full_store, beton=betons[1])


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(TokenLabelStoreError, match="rmt_dist.tokenlabel.generate"):
        TokenLabelStore(tmp_path / "nope.tokenlabel")


def test_store_with_other_class_count_is_refused(full_store):
    with pytest.raises(TokenLabelStoreError, match="model.num_classes=1000"):
        TokenLabelStore(full_store, num_classes=1000)


def test_teacher_with_other_class_count_is_refused(betons, tmp_path, capsys):
    ckpt = tmp_path / "t100.pth"
    torch.save(timm.create_model(TEACHER, num_classes=100).state_dict(), ckpt)
    assert (
        gen.main(
            [
                str(betons[0]),
                str(tmp_path / "s"),
                "--teacher",
                TEACHER,
                "--checkpoint",
                str(ckpt),
                "--device",
                "cpu",
                "--img-size",
                "64",
            ]
        )
        == 2
    )
    assert "has 100 classes but the dataset has 10" in capsys.readouterr().err


def test_teacher_without_weights_is_refused(betons, tmp_path, capsys):
    assert gen.main([str(betons[0]), str(tmp_path / "s"), "--teacher", TEACHER, "--device", "cpu"]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_settings_change_needs_overwrite(full_store, betons, teacher_ckpt, capsys):
    assert (
        gen.main(
            [
                *map(str, [betons[0], full_store]),
                "--teacher",
                TEACHER,
                "--checkpoint",
                str(teacher_ckpt),
                "--img-size",
                "96",
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "--overwrite" in capsys.readouterr().err


def test_view_is_recorded_and_older_stores_count_as_squash(
    full_store, betons, teacher_ckpt, tmp_path, capsys
):
    import json
    import shutil

    assert TokenLabelStore(full_store).meta.view == {"kind": "squash"}
    old = tmp_path / "old.tokenlabel"
    shutil.copytree(full_store, old)
    meta = json.loads((old / "meta.json").read_text())
    meta["view"] = None  # written before views were recorded
    (old / "meta.json").write_text(json.dumps(meta))
    gen.generate(args(betons[0], old, teacher_ckpt))  # same settings: nothing to redo, no --overwrite
    assert "already complete" in capsys.readouterr().out
    assert (
        gen.main(
            [
                *map(str, [betons[0], old]),
                "--teacher",
                TEACHER,
                "--checkpoint",
                str(teacher_ckpt),
                "--img-size",
                "64",
                "--topk",
                "3",
                "--chunk-size",
                "256",
                "--device",
                "cpu",
                "--view",
                "center-crop",
            ]
        )
        == 2
    )
    assert "view whole image" in capsys.readouterr().err
