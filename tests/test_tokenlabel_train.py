"""Acceptance: tiny teacher -> token labels -> starred student, on CPU, and its loss falls;
bad token-label inputs are one-line errors before training starts."""

from __future__ import annotations

import numpy as np
import pytest
from test_engine_support import digits_dir, records

from rmt_dist.tokenlabel import TokenLabelStore
from rmt_dist.tokenlabel import generate as gen
from rmt_dist.train import main

IMG = 64  # 2x2 token grid


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return digits_dir(tmp_path_factory)


def common(digits, run_dir):
    return [
        f"run.dir={run_dir}",
        f"data.train={digits}/train.beton",
        f"data.val={digits}/val.beton",
        f"data.img_size={IMG}",
        "data.num_workers=1",
        "run.log_every=1",
        "checkpoint.every_steps=1000",
    ]


@pytest.fixture(scope="module")
def labelled(digits, tmp_path_factory):
    """A teacher trained for a few steps, and its token labels for the train beton."""
    base = tmp_path_factory.mktemp("tl_train")
    teacher = base / "teacher"
    assert main(["recipes/smoke.yaml", *common(digits, teacher), "optim.epochs=4"]) == 0
    store = base / "train.tokenlabel"
    gen.generate(
        gen.parse_args(
            [
                f"{digits}/train.beton",
                str(store),
                "--teacher",
                "rmt_test",
                "--checkpoint",
                str(teacher),
                "--img-size",
                str(IMG),
                "--workers",
                "1",
                "--device",
                "cpu",
            ]
        )
    )
    return store


def student(digits, run_dir, store, *extra):
    return [
        "recipes/smoke.yaml",
        *common(digits, run_dir),
        "model.token_label=true",
        "tokenlabel.enabled=true",
        f"tokenlabel.store={store}",
        "tokenlabel.size=2",
        *extra,
    ]


def test_teacher_labels_cover_the_training_set(labelled, digits):
    st = TokenLabelStore(labelled, beton=f"{digits}/train.beton", num_classes=10)
    assert (st.meta.map_h, st.meta.map_w, st.meta.topk) == (2, 2, 5)
    assert np.isfinite(np.asarray(st.scores, np.float32)).all()


def test_starred_student_trains_and_its_loss_falls(labelled, digits, tmp_path):
    run = tmp_path / "student"
    assert main(student(digits, run, labelled, "run.stop_after_steps=40", "optim.warmup_epochs=0")) == 0
    losses = [r["loss"] for r in records(run) if "loss" in r]
    assert len(losses) == 40
    assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.1, losses


def test_store_for_another_beton_stops_before_training(labelled, digits, tmp_path, capsys):
    run = tmp_path / "wrong"
    argv = student(digits, run, labelled, f"data.train={digits}/val.beton", "run.stop_after_steps=2")
    assert main(argv) == 2
    assert "made for" in capsys.readouterr().err
    assert not (run / "metrics.jsonl").exists()


def test_missing_store_stops_before_training(digits, tmp_path, capsys):
    assert main(student(digits, tmp_path / "r", tmp_path / "none.tokenlabel", "run.stop_after_steps=2")) == 2
    assert "rmt_dist.tokenlabel.generate" in capsys.readouterr().err


def test_store_with_other_classes_stops_before_training(labelled, digits, tmp_path, capsys):
    assert (
        main(student(digits, tmp_path / "r", labelled, "model.num_classes=12", "run.stop_after_steps=2")) == 2
    )
    assert "model.num_classes=12" in capsys.readouterr().err
