"""rmt_dist.models.weights: every source kind loads into the model and gives the source's outputs.

Kinds: released qhfan/RMT .pth files (key names from the committed fixture, with and without
the `model` / `state_dict` / `module` wrappers and the DDP prefix), timm train.py checkpoints
(with their EMA and argparse Namespace), .safetensors, and a run dir / checkpoint dir of this
project written by a real (tiny, ddp, one-rank) Trainer, with and without EMA. Then
`model.init_checkpoint` end to end through the Trainer, and the one-line errors.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest
import torch
from test_engine_support import config, digits_dir
from test_models_official import (
    _official_fixture,
    _release_style_checkpoint,
    deterministic_fill,
    deterministic_input,
)

from rmt_dist.config import derive
from rmt_dist.engine.distributed import init_distributed, shutdown_distributed
from rmt_dist.models import WeightsError, create_model, load_into, read_weights


def _filled(seed: int = 0, **kwargs) -> torch.nn.Module:
    model = create_model("rmt_test", num_classes=10, **kwargs).eval()
    deterministic_fill(model)
    with torch.no_grad():  # distinct from another seed's fill, so a wrong source cannot pass
        for p in model.parameters():
            p.add_(0.01 * seed)
    return model


def _assert_same_model(loaded: torch.nn.Module, source_sd: dict[str, torch.Tensor], source=None) -> None:
    ours = loaded.state_dict()
    assert sorted(ours) == sorted(source_sd)
    for k, v in source_sd.items():
        assert torch.equal(ours[k], v), k
    if source is not None:
        x = deterministic_input((2, 3, 32, 32))
        with torch.no_grad():
            assert torch.equal(loaded.eval()(x), source.eval()(x))


def _fresh(**kwargs) -> torch.nn.Module:
    torch.manual_seed(123)
    return create_model("rmt_test", num_classes=10, **kwargs).eval()


# -- released .pth ------------------------------------------------------------------------


def _shared_storage_state_dict(shapes: dict[str, list[int]], relpos: dict) -> dict[str, torch.Tensor]:
    """The released key names and shapes, every tensor a view of one storage (a small file)."""
    base = torch.sin(torch.arange(max(torch.Size(s).numel() for s in shapes.values()), dtype=torch.float32))
    sd = {k: base[: torch.Size(s).numel()].view(s) for k, s in shapes.items() if ".Relpos." not in k}
    sd.update({k: torch.tensor(v) for k, v in relpos.items()})
    return sd


@pytest.mark.parametrize("wrap", ["bare", "model", "state_dict+module.", "module"])
def test_released_pth_key_names_load_strict(tmp_path, wrap):
    """The released RMT-T's 374 names (fixture) in every wrapping a release file comes in."""
    entry = _official_fixture()["rmt_t"]
    sd = _shared_storage_state_dict(entry["shapes"], entry["relpos_values"])
    wrapped = {
        "bare": sd,
        # What qhfan/RMT classfication_release/main.py saves (its argparse Namespace included).
        "model": {
            "model": sd,
            "optimizer": {},
            "lr_scheduler": {},
            "epoch": 299,
            "model_ema": {},
            "scaler": {},
            "args": argparse.Namespace(model="RMT_T", lr=1e-3),
            "max_accuracy": 82.4,
        },
        "state_dict+module.": {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 299},
        "module": {"module": sd},
    }[wrap]
    path = tmp_path / "RMT_T.pth"
    torch.save(wrapped, path)
    model = create_model("rmt_t", num_classes=1000)
    load_into(model, path)
    expected = {k: v for k, v in sd.items() if ".Relpos." not in k}
    _assert_same_model(model, expected)


def test_released_pth_ema(tmp_path):
    source, ema = _filled(0), _filled(1)
    checkpoint = _release_style_checkpoint(source)
    checkpoint.update(model_ema=ema.state_dict(), args=argparse.Namespace(model="RMT_T", model_ema=True))
    torch.save(checkpoint, tmp_path / "checkpoint.pth")
    _assert_same_model(load_into(_fresh(), tmp_path / "checkpoint.pth"), source.state_dict(), source)
    _assert_same_model(load_into(_fresh(), tmp_path / "checkpoint.pth", ema=True), ema.state_dict(), ema)


def test_released_starred_pth_loads_into_token_label_model(tmp_path):
    entry = _official_fixture()["rmt_s*"]
    sd = _shared_storage_state_dict(entry["shapes"], entry["relpos_values"])
    torch.save({"model": sd}, tmp_path / "RMT_S_star.pth")
    with torch.device("meta"):
        model = create_model("rmt_s", num_classes=1000, token_label=True)
    weights = read_weights(tmp_path / "RMT_S_star.pth", model=model)
    assert sorted(weights) == sorted(model.state_dict())


@pytest.mark.parametrize("token_label", [False, True])
def test_release_style_pth_gives_the_source_outputs(tmp_path, token_label):
    source = _filled(token_label=token_label)
    path = tmp_path / "release.pth"
    torch.save(_release_style_checkpoint(source), path)  # module. prefix + Relpos buffers, under "model"
    _assert_same_model(load_into(_fresh(token_label=token_label), path), source.state_dict(), source)


# -- timm checkpoints, safetensors ---------------------------------------------------------


def test_timm_train_checkpoint_model_and_ema(tmp_path):
    model, ema = _filled(0), _filled(1)
    path = tmp_path / "model_best.pth.tar"
    torch.save(
        {
            "epoch": 299,
            "arch": "rmt_test",
            "state_dict": model.state_dict(),
            "state_dict_ema": {f"module.{k}": v for k, v in ema.state_dict().items()},
            "optimizer": {},
            "version": 2,
            "args": argparse.Namespace(lr=1e-3, model="rmt_test"),
            "metric": 80.0,
        },
        path,
    )
    _assert_same_model(load_into(_fresh(), path), model.state_dict(), model)
    _assert_same_model(load_into(_fresh(), path, ema=True), ema.state_dict(), ema)
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(WeightsError, match="without EMA weights"):
        read_weights(tmp_path / "bare.pth", ema=True)


def test_safetensors(tmp_path, caplog):
    from safetensors.torch import save_file

    source = _filled()
    path = tmp_path / "w.safetensors"
    save_file(source.state_dict(), str(path))
    with caplog.at_level(logging.INFO, logger="rmt_dist.models.weights"):
        _assert_same_model(load_into(_fresh(), path), source.state_dict(), source)
    said = [r.getMessage() for r in caplog.records if r.name == "rmt_dist.models.weights"]
    assert len(said) == 1 and "safetensors" in said[0] and str(path) in said[0], said
    with pytest.raises(WeightsError, match="without --ema"):
        read_weights(path, ema=True)


# -- run dirs and checkpoint dirs of this project ----------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real one-rank ddp run: checkpoints at steps 2 and 3, with the weights and EMA of each."""
    from rmt_dist.engine.trainer import Trainer

    digits = digits_dir(tmp_path_factory)
    run_dir = tmp_path_factory.mktemp("weights_run") / "run"
    info = init_distributed()
    try:
        cfg = config(run_dir, "ddp", "checkpoint.resume=false", data=digits)
        trainer = Trainer(derive(cfg, 1), info)
        batches = trainer.train_loader.epoch(0)
        saved = {}
        for step in (1, 2, 3):
            trainer.train_step([next(batches)])
            if step >= 2:
                assert trainer.save_checkpoint()
                s = trainer.strategy
                saved[step] = {"model": s.full_state_dict(), "ema": s.full_state_dict(trainer.ema.state)}
        trainer.close()
    finally:
        shutdown_distributed(info)
    (run_dir / "checkpoints" / "step_00000009").mkdir()  # an interrupted save: no COMPLETE, skipped
    return run_dir, saved


@pytest.mark.parametrize("ema", [False, True])
def test_run_dir_reads_the_newest_complete_checkpoint(trained_run, ema):
    run_dir, saved = trained_run
    expected = saved[3]["ema" if ema else "model"]
    assert not torch.equal(expected["head.weight"], saved[2]["ema" if ema else "model"]["head.weight"])
    reference = _fresh()
    reference.load_state_dict(expected)
    _assert_same_model(load_into(_fresh(), run_dir, ema=ema), expected, reference)


@pytest.mark.parametrize("ema", [False, True])
def test_checkpoint_dir_reads_that_checkpoint(trained_run, ema):
    run_dir, saved = trained_run
    expected = saved[2]["ema" if ema else "model"]
    _assert_same_model(load_into(_fresh(), run_dir / "checkpoints" / "step_00000002", ema=ema), expected)


# -- model.init_checkpoint through the Trainer ---------------------------------------------


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return digits_dir(tmp_path_factory)


def _trainer_from(digits, tmp_path, init_checkpoint, *overrides):
    from rmt_dist.engine.trainer import Trainer

    cfg = config(
        tmp_path / "ft",
        "ddp",
        "checkpoint.resume=false",
        f"model.init_checkpoint={init_checkpoint}",
        *overrides,
        data=digits,
    )
    info = init_distributed()
    try:
        return Trainer(derive(cfg, 1), info)
    except BaseException:
        shutdown_distributed(info)  # the next test makes its own process group
        raise


def _train_two_steps(trainer) -> None:
    batches = trainer.train_loader.epoch(0)
    losses = [trainer.train_step([next(batches)]).loss for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(losses))), losses


def test_init_checkpoint_from_a_released_pth_trains(digits, tmp_path):
    source = _filled(token_label=False)
    path = tmp_path / "release.pth"
    torch.save(_release_style_checkpoint(source), path)
    trainer = _trainer_from(digits, tmp_path, path)
    try:
        _assert_same_model(trainer.strategy.module, source.state_dict())
        _train_two_steps(trainer)
    finally:
        trainer.close()
        shutdown_distributed(trainer.info)


def test_a_resumed_run_does_not_read_init_checkpoint_again(digits, tmp_path):
    """A requeue resumes its checkpoint; the pretrained file it started from may be gone by then
    (scratch, node-local disk) and must not stop the run (review)."""
    path = tmp_path / "release.pth"
    torch.save(_release_style_checkpoint(_filled(token_label=False)), path)
    trainer = _trainer_from(digits, tmp_path, path, "checkpoint.resume=true")
    try:
        _train_two_steps(trainer)
        assert trainer.save_checkpoint()
        saved = {k: v.detach().clone() for k, v in trainer.strategy.module.state_dict().items()}
    finally:
        trainer.close()
        shutdown_distributed(trainer.info)
    path.unlink()
    resumed = _trainer_from(digits, tmp_path, path, "checkpoint.resume=true")
    try:
        assert resumed.resumed_from is not None
        _assert_same_model(resumed.strategy.module, saved)
    finally:
        resumed.close()
        shutdown_distributed(resumed.info)


def test_init_checkpoint_from_a_run_dir_trains(digits, tmp_path, trained_run):
    run_dir, saved = trained_run
    trainer = _trainer_from(digits, tmp_path, run_dir)
    try:
        _assert_same_model(trainer.strategy.module, saved[3]["model"])
        _train_two_steps(trainer)
    finally:
        trainer.close()
        shutdown_distributed(trainer.info)


def test_init_checkpoint_with_another_class_count_keeps_a_fresh_head(digits, tmp_path):
    source = create_model("rmt_test", num_classes=1000).eval()
    deterministic_fill(source)
    path = tmp_path / "in1k.pth"
    torch.save(_release_style_checkpoint(source), path)
    trainer = _trainer_from(digits, tmp_path, path)
    try:
        ours = trainer.strategy.module.state_dict()
        assert ours["head.weight"].shape[0] == 10
        for k, v in source.state_dict().items():
            if not k.startswith("head."):
                assert torch.equal(ours[k], v), k
    finally:
        trainer.close()
        shutdown_distributed(trainer.info)


# -- errors --------------------------------------------------------------------------------


def test_missing_path_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsError) as e:
        read_weights(missing)
    assert str(missing) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(WeightsError, match="no complete checkpoint"):
        read_weights(tmp_path)  # a directory that is no run dir
    (tmp_path / "garbage.pth").write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="garbage.pth is not a readable torch file"):
        read_weights(tmp_path / "garbage.pth")


def test_weights_of_another_model_are_one_line_listing_the_keys(tmp_path):
    with torch.device("meta"):
        other = create_model("rmt_t", num_classes=10)
    from safetensors.torch import save_file

    path = tmp_path / "rmt_t.safetensors"
    save_file(
        {k: torch.zeros(v.shape) for k, v in other.state_dict().items() if k.startswith("layers.3")},
        str(path),
    )
    with pytest.raises(WeightsError) as e:
        load_into(_fresh(), path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "do not fit model rmt_test" in msg, msg
    assert "missing (patch_embed." in msg and "more" in msg and len(msg) < 600, msg


def test_released_weights_of_another_variant_are_rejected(tmp_path):
    entry = _official_fixture()["rmt_b*"]
    torch.save(
        {"model": _shared_storage_state_dict(entry["shapes"], entry["relpos_values"])}, tmp_path / "b.pth"
    )
    with torch.device("meta"):
        model = create_model("rmt_l", token_label=True)
    with pytest.raises(WeightsError, match="different RMT variant"):
        read_weights(tmp_path / "b.pth", model=model)


def test_teacher_class_count_mismatch_is_one_line(tmp_path):
    from rmt_dist.tokenlabel import TokenLabelStoreError
    from rmt_dist.tokenlabel.teacher import build_teacher

    path = tmp_path / "t.pth"
    torch.save(_filled().state_dict(), path)
    with pytest.raises(TokenLabelStoreError, match="has 10 classes but the dataset has 7"):
        build_teacher("rmt_test", str(path), num_classes=7)


def test_bad_init_checkpoint_exits_2(digits, tmp_path, capsys):
    from rmt_dist.train import main

    argv = [
        "recipes/smoke.yaml",
        f"run.dir={tmp_path / 'run'}",
        f"data.train={digits}/train.beton",
        f"data.val={digits}/val.beton",
        "data.num_workers=1",
        f"model.init_checkpoint={tmp_path / 'x.pth'}",
    ]
    assert main(argv) == 2
    assert "x.pth" in capsys.readouterr().err
