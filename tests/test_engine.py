"""Acceptance tests of the training engine: 2 ranks (gloo, CPU) per strategy.

One forked 2-rank process group per strategy runs a sequence of short training runs
(the expensive part is process start-up, so each group checks many properties):

  A  reference run to step 12 (checkpoints at 4, 8, epoch end 11, stop 12) on the real
     digits betons and FFCV loader (rmt_dist.data), 64 images per rank
  B  the same run stopped at 6, resumed and stopped at 9, then the newest checkpoint
     (9) truncated and the run resumed to 12: it must resume from 8 and every logged
     loss (and the epoch-end eval) must equal A's bitwise
  D  NaN injected at step 3 (skipped) and at 6-8 with run.max_bad_steps=3: exit code 1,
     last good checkpoint (4) intact and finite
  F  SIGTERM to the last rank during step 3: both ranks save step 3 and exit with
     EXIT_PREEMPTED
  E  Trainer driven by hand: EMA equals a hand-computed EMA, a NaN step leaves weights
     and EMA untouched, EMA evaluation restores the weights; reference outputs for export

The parent process then checks metrics.jsonl, TensorBoard events, export round trips
and a 2 -> 1 rank resume.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from test_engine_support import config, digits_dir, records, run_ranks, train_losses

import rmt_dist.models  # noqa: F401  (registers the RMT models with timm)
from rmt_dist.engine.checkpoint import list_step_dirs
from rmt_dist.engine.distributed import init_distributed, shutdown_distributed
from rmt_dist.engine.faults import ENV_SIGNAL, ENV_STEPS, Faults
from rmt_dist.engine.preempt import EXIT_PREEMPTED
from rmt_dist.engine.run import run
from rmt_dist.engine.trainer import Trainer

STOP = 12
EPOCH_END = 11  # 1438 digits / (64 per rank x 2 ranks)
STRATEGIES = {
    "ddp": ["strategy.name=ddp"],
    "fsdp": ["strategy.name=fsdp"],
    "zero1": ["strategy.name=deepspeed", "strategy.zero_stage=1"],
    "zero2": ["strategy.name=deepspeed", "strategy.zero_stage=2"],
    "zero3": ["strategy.name=deepspeed", "strategy.zero_stage=3"],
}


def _cfg(run_dir: Path, strategy: list[str], *overrides: str):
    from rmt_dist.config import derive

    data = Path(os.environ["RMT_TEST_DIGITS"])
    cfg = config(
        run_dir, "ddp", *strategy, "checkpoint.every_steps=4", "data.batch_size=64", *overrides, data=data
    )
    return cfg, derive


def _run(cfg, info, rank, world) -> int:
    return run(cfg, info)


def _truncate_newest(run_dir: Path) -> Path:
    newest = list_step_dirs(run_dir / "checkpoints")[0]
    victim = max((f for f in newest.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)
    return newest


def _scenario(rank: int, world: int, strategy: list[str], tmp: Path) -> None:
    info = dataclasses.replace(init_distributed(), owns_group=False)  # keep the group across runs
    results: dict = {}

    cfg, _ = _cfg(tmp / "A", strategy, f"run.stop_after_steps={STOP}")
    results["A"] = _run(cfg, info, rank, world)

    for stop in (6, 9):
        cfg, _ = _cfg(tmp / "B", strategy, f"run.stop_after_steps={stop}")
        results[f"B{stop}"] = _run(cfg, info, rank, world)
    torch.distributed.barrier()
    if rank == 0:
        results["truncated"] = str(_truncate_newest(tmp / "B"))
    torch.distributed.barrier()
    cfg, _ = _cfg(tmp / "B", strategy, f"run.stop_after_steps={STOP}")
    results["B12"] = _run(cfg, info, rank, world)

    os.environ[ENV_STEPS] = "3,6-8"
    cfg, _ = _cfg(tmp / "D", strategy, "run.max_bad_steps=3")
    results["D"] = _run(cfg, info, rank, world)
    del os.environ[ENV_STEPS]

    os.environ[ENV_SIGNAL] = "3"
    cfg, _ = _cfg(tmp / "F", strategy)
    results["F"] = _run(cfg, info, rank, world)
    del os.environ[ENV_SIGNAL]

    results.update(_ema_by_hand(rank, world, strategy, tmp / "E", info))
    (tmp / f"results_{rank}.json").write_text(json.dumps(results))


def _float_items(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if v.is_floating_point()}


def _ema_by_hand(rank, world, strategy, run_dir: Path, info) -> dict:
    cfg, derive = _cfg(run_dir, strategy, "ema.decay=0.9", "checkpoint.resume=false")
    cfg = derive(cfg, world)
    # A NaN loss at step 2 on the last rank only: every rank must skip the update.
    trainer = Trainer(cfg, info, faults=Faults(nan_steps={2} if rank == world - 1 else set()))
    s = trainer.strategy
    decay = cfg.derived.ema_decay
    weights = s.full_state_dict()
    expected = {k: v.clone() for k, v in weights.items()}
    ema = s.full_state_dict(ema=trainer.ema.state)
    assert set(ema) == set(weights)
    for k in _float_items(weights):
        assert torch.equal(ema[k], weights[k]), f"EMA must start as a copy of the weights ({k})"
    batches = trainer.train_loader.epoch(0)
    for step in (1, 2, 3):
        before = weights
        lr = trainer.schedule(step - 1)  # the position before the step
        stats = trainer.train_step([next(batches)])
        # train_step moves the state on (a skipped step too): step and position in the epoch.
        assert (trainer.state.step, trainer.state.step_in_epoch, stats.step, stats.lr) == (
            step,
            step,
            step,
            lr,
        )
        assert trainer.state.bad_steps == (step >= 2) and trainer.state.bad_streak == (step == 2)
        weights = s.full_state_dict()
        ema = s.full_state_dict(ema=trainer.ema.state)
        if step == 2:
            assert stats.bad and not stats.applied
            for k in weights:
                assert torch.equal(weights[k], before[k]), f"a skipped step changed {k}"
        else:
            assert stats.applied and not stats.bad
            for k, w in _float_items(weights).items():
                expected[k] = decay * expected[k] + (1 - decay) * w
        for k in _float_items(weights):
            torch.testing.assert_close(ema[k], expected[k], rtol=0, atol=1e-6, msg=f"EMA of {k}")
    # Evaluating the EMA swaps it in and back out.
    trainer.evaluate()
    after_eval = s.full_state_dict()
    for k in weights:
        assert torch.equal(after_eval[k], weights[k]), f"evaluation changed {k}"
    # Reference outputs of the distributed model (and its EMA) for the export round trip.
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    s.train(False)
    with torch.no_grad():
        logits = s.forward(x).float()
        with s.ema_swapped(trainer.ema):
            ema_logits = s.forward(x).float()
    assert trainer.save_checkpoint()
    trainer.close()
    if rank == 0:
        torch.save({"x": x, "logits": logits, "ema_logits": ema_logits}, run_dir / "reference.pt")
    return {"E": "ok"}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = digits_dir(tmp_path_factory)
    os.environ["RMT_TEST_DIGITS"] = str(out)
    yield out
    del os.environ["RMT_TEST_DIGITS"]


@pytest.fixture(scope="module", params=list(STRATEGIES))
def scenario(request, tmp_path_factory, digits):
    tmp = tmp_path_factory.mktemp(request.param)
    run_ranks(_scenario, 2, STRATEGIES[request.param], tmp, tmp=tmp)
    results = json.loads((tmp / "results_0.json").read_text())
    results["F1"] = json.loads((tmp / "results_1.json").read_text())["F"]
    return request.param, tmp, results


def test_training_reduces_loss_and_logs(scenario):
    name, tmp, results = scenario
    assert results["A"] == 0
    losses = train_losses(tmp / "A")
    assert sorted(losses) == list(range(1, STOP + 1))
    first, last = (
        sum(losses[s] for s in (1, 2, 3)) / 3,
        sum(losses[s] for s in (STOP - 2, STOP - 1, STOP)) / 3,
    )
    assert last < first - 0.1, f"loss did not fall: {first:.3f} -> {last:.3f}"
    evals = [r for r in records(tmp / "A") if "eval/top1" in r]
    assert [r["step"] for r in evals] == [EPOCH_END]
    assert {"eval/top5", "eval_ema/top1", "eval_ema/top5"} <= set(evals[0])
    for r in records(tmp / "A"):
        if "loss" in r:
            assert {"epoch", "lr", "img_per_s", "grad_norm", "skipped_steps"} <= set(r)
    ckpts = [p.name for p in list_step_dirs(tmp / "A" / "checkpoints")]
    assert ckpts == [f"step_{STOP:08d}", f"step_{EPOCH_END:08d}"], "keep_last=2 keeps the two newest"
    assert (tmp / "A" / "checkpoints" / "latest").read_text().strip() == "step_00000012"
    assert (tmp / "A" / "config.yaml").is_file()


def test_exact_resume_after_stop_and_truncated_checkpoint(scenario):
    name, tmp, results = scenario
    assert results["B6"] == results["B9"] == results["B12"] == 0
    assert results["truncated"].endswith("step_00000009")
    a, b = records(tmp / "A"), records(tmp / "B")
    b_steps = [r["step"] for r in b if "loss" in r]
    assert b_steps == list(range(1, STOP + 1)), "a resumed run continues the same series, without duplicates"
    assert train_losses(tmp / "B") == train_losses(tmp / "A"), "resume must be bitwise exact"
    a_eval = [r for r in a if "eval/top1" in r]
    b_eval = [r for r in b if "eval/top1" in r]
    for key in ("eval/top1", "eval/top5", "eval_ema/top1", "eval_ema/top5"):
        assert [r[key] for r in b_eval] == [r[key] for r in a_eval]


def test_nan_steps_are_skipped_then_stop_the_run(scenario):
    name, tmp, results = scenario
    assert results["D"] == 1
    losses = train_losses(tmp / "D")
    assert losses[3] is None and losses[4] is not None and losses[5] is not None
    assert losses[1] == train_losses(tmp / "A")[1]
    recs = {r["step"]: r for r in records(tmp / "D") if "loss" in r}
    assert recs[3]["bad_steps"] == 1 and recs[8]["bad_steps"] == 4
    assert max(recs) == 8
    latest = (tmp / "D" / "checkpoints" / "latest").read_text().strip()
    assert latest == "step_00000004"
    from rmt_dist.export import load_consolidated

    weights = load_consolidated(tmp / "D")
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_signal_on_one_rank_saves_and_exits(scenario):
    name, tmp, results = scenario
    assert results["F"] == results["F1"] == EXIT_PREEMPTED
    assert (tmp / "F" / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    a = train_losses(tmp / "A")
    assert train_losses(tmp / "F") == {s: a[s] for s in (1, 2, 3)}


def test_evaluate_command(scenario, capsys):
    from rmt_dist.evaluate import main as evaluate_main

    name, tmp, _ = scenario
    if name != "ddp":
        pytest.skip(
            "the command reads consolidated weights the same way for every strategy (export tests cover them)"
        )
    ckpt = tmp / "A" / "checkpoints" / f"step_{EPOCH_END:08d}"
    val = Path(os.environ["RMT_TEST_DIGITS"]) / "val.beton"
    assert evaluate_main([str(ckpt), "--data", str(val), "data.eval_batch_size=100"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    logged = next(r for r in records(tmp / "A") if "eval/top1" in r)
    for key in ("eval/top1", "eval/top5", "eval_ema/top1", "eval_ema/top5"):
        assert got[key] == pytest.approx(logged[key], abs=100 / 359 + 1e-9), key  # at most one sample apart
    assert got["eval/samples"] == 359
    assert evaluate_main([str(tmp / "nope"), "--data", str(val)]) == 2


def test_tensorboard_scalars(scenario):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    name, tmp, _ = scenario
    for run_dir in ("A", "B"):
        acc = EventAccumulator(str(tmp / run_dir / "tb"))
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        wanted = {
            "train/loss",
            "train/lr",
            "train/grad_norm",
            "train/img_per_s",
            "train/mem_gb",
            "train/skipped_steps",
            "eval/top1",
            "eval/top5",
            "eval_ema/top1",
            "eval_ema/top5",
        }
        assert wanted <= tags, f"missing {wanted - tags}"
        loss = acc.Scalars("train/loss")
        assert [e.step for e in loss] == list(range(1, STOP + 1)), f"{run_dir}: one event per step"
    a = {e.step: e.value for e in EventAccumulator(str(tmp / "A" / "tb")).Reload().Scalars("train/loss")}
    b = {e.step: e.value for e in EventAccumulator(str(tmp / "B" / "tb")).Reload().Scalars("train/loss")}
    assert a == b


def test_export_round_trip(scenario, tmp_path):
    import timm
    from safetensors.torch import load_file

    from rmt_dist.export import main as export_main

    name, tmp, _ = scenario
    ref = torch.load(tmp / "E" / "reference.pt")
    for ema, key in ((False, "logits"), (True, "ema_logits")):
        out = tmp_path / f"w{int(ema)}.safetensors"
        assert export_main([str(tmp / "E"), str(out), *(["--ema"] if ema else [])]) == 0
        model = timm.create_model("rmt_test", num_classes=10)
        model.load_state_dict(load_file(str(out)), strict=True)
        with torch.no_grad():
            got = model.eval()(ref["x"])
        torch.testing.assert_close(got, ref[key], rtol=1e-5, atol=1e-5)


def test_resume_on_fewer_ranks(scenario, tmp_path, caplog, monkeypatch):
    """ddp/fsdp reshard through DCP, deepspeed through its universal checkpoint format."""
    name, tmp, _ = scenario
    from rmt_dist.config import derive
    from rmt_dist.export import load_consolidated

    run_dir = tmp_path / "one"
    shutil.copytree(tmp / "A", run_dir)
    saved = load_consolidated(run_dir)
    saved_ema = load_consolidated(run_dir, ema=True)
    cfg, _ = _cfg(run_dir, STRATEGIES[name], f"run.stop_after_steps={STOP + 2}")
    cfg = derive(cfg, 1)
    info = init_distributed()
    monkeypatch.setattr(logging.getLogger("rmt_dist"), "propagate", True)  # run() turns it off
    try:
        with caplog.at_level(logging.WARNING, logger="rmt_dist"):
            trainer = Trainer(cfg, info)
        assert "resuming a 2-rank checkpoint on 1 ranks: the data order changes" in caplog.text
        assert trainer.state.step == STOP and trainer.state.epoch == 1
        assert trainer.state.step_in_epoch == 2, "1 step of 2 x 64 images = 2 steps of 64"
        now = trainer.strategy.full_state_dict()
        now_ema = trainer.strategy.full_state_dict(ema=trainer.ema.state)
        for k in saved:
            assert torch.equal(now[k], saved[k]), k
            assert torch.equal(now_ema[k], saved_ema[k]), k
        assert trainer.train() == 0
        trainer.close()
    finally:
        shutdown_distributed(info)
    losses = train_losses(run_dir)
    assert sorted(losses) == list(range(1, STOP + 3))
    assert all(losses[s] is not None for s in (STOP + 1, STOP + 2))
