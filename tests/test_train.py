"""Single-process checks of the entry point and the precision paths (the 2-rank acceptance
tests are in test_engine.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from test_engine_support import config, digits_dir, records

import rmt_dist.models  # noqa: F401  (registers the RMT models with timm)
from rmt_dist.config import derive, load_resolved
from rmt_dist.engine.distributed import init_distributed, shutdown_distributed
from rmt_dist.engine.trainer import Trainer
from rmt_dist.train import main


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return digits_dir(tmp_path_factory)


def test_main_runs_and_writes_the_run_dir(digits, tmp_path):
    run_dir = tmp_path / "run"
    argv = [
        "recipes/smoke.yaml",
        f"run.dir={run_dir}",
        f"data.train={digits}/train.beton",
        f"data.val={digits}/val.beton",
        "run.stop_after_steps=2",
        "run.log_every=1",
        "data.num_workers=1",
    ]
    assert main(argv) == 0
    cfg = load_resolved(run_dir / "config.yaml")
    assert cfg.derived.world_size == 1 and cfg.derived.global_batch == 32
    assert [r["step"] for r in records(run_dir)] == [1, 2]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert not torch.distributed.is_initialized(), "main destroys the process group it made"
    assert main([*argv, "run.stop_after_steps=3"]) == 0, "a second call in the same process resumes"
    assert [r["step"] for r in records(run_dir)] == [1, 2, 3]


def test_main_rejects_bad_input_with_exit_code_2(capsys):
    assert main(["recipes/smoke.yaml", "optim.lrr=1"]) == 2
    assert "optim.lr" in capsys.readouterr().err
    assert main([]) == 2


@pytest.fixture
def single_rank():
    info = init_distributed()
    yield info
    shutdown_distributed(info)


def _trainer(digits, tmp_path, info, *overrides):
    cfg = config(tmp_path / "run", "ddp", "checkpoint.resume=false", *overrides, data=digits)
    return Trainer(derive(cfg, 1), info)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_bf16_autocast_trains(digits, tmp_path, single_rank, strategy):
    t = _trainer(digits, tmp_path, single_rank, "precision=bf16", f"strategy.name={strategy}")
    device_type = single_rank.device.type
    seen = []  # (autocast on, its dtype) inside each forward of the first linear layer
    linear = next(m for m in t.strategy.module.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_pre_hook(
        lambda m, args: seen.append(
            (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        )
    )
    batches = t.train_loader.epoch(0)
    losses = [t.train_step([next(batches)]).loss for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert seen and all(s == (True, torch.bfloat16) for s in seen), (
        f"forward not under bf16 autocast: {set(seen)}"
    )
    # FSDP2's policy computes in bf16 but keeps fp32 master weights (and an fp32 EMA).
    assert all(p.dtype == torch.float32 for p in t.strategy.module.parameters())
    assert all(v.dtype == torch.float32 for v in t.ema.state.values() if v.is_floating_point())
    t.close()


def test_fp16_overflow_is_skipped_and_counted(digits, tmp_path, single_rank):
    t = _trainer(digits, tmp_path, single_rank, "precision=fp16")
    assert t.strategy.scaler is not None
    t.strategy.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)  # guaranteed overflow
    before = t.strategy.full_state_dict()
    batches = t.train_loader.epoch(0)
    stats = t.train_step([next(batches)])
    assert stats.overflow and not stats.applied and not stats.bad
    assert t.state.overflow_steps == 1 and t.state.bad_streak == 0
    after = t.strategy.full_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), (
        "an overflow step must not change the weights"
    )
    assert t.strategy.scaler.get_scale() < 2.0**100
    t.strategy.scaler.update(new_scale=2.0**8)
    stats = t.train_step([next(batches)])
    assert stats.applied and not stats.overflow
    t.close()


def test_gradient_accumulation_counts_optimizer_steps(digits, tmp_path, single_rank):
    t = _trainer(
        digits, tmp_path, single_rank, "optim.accum_steps=2", "data.batch_size=16", "optim.clip_grad=null"
    )
    assert t.steps_per_epoch == t.train_loader.steps_per_epoch // 2
    assert t.cfg.derived.global_batch == 32
    batches = t.train_loader.epoch(0)
    micro = [tuple(x.clone() for x in next(batches)) for _ in range(2)]  # the loader reuses its buffers
    # The update must use the mean gradient of both micro-batches: compute it on a copy of
    # the model (fp32, no drop path: deterministic) and compare with what the optimizer sees.
    reference = copy.deepcopy(t.strategy.module).train()
    sum(t.criterion(reference(images), targets) / 2 for images, targets in micro).backward()
    expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    stepped = {}
    t.strategy.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: stepped.update(
            {n: p.grad.clone() for n, p in t.strategy.module.named_parameters() if p.grad is not None}
        )
    )
    stats = t.train_step(micro)
    assert stats.applied and t.state.step == 1
    assert stepped.keys() == expected.keys()
    worst = max(
        (stepped[n] - g).abs().max().item() / (g.abs().max().item() + 1e-12) for n, g in expected.items()
    )
    assert worst < 1e-4, (
        f"the accumulated gradient is not the mean over both micro-batches (rel. error {worst:.3g})"
    )
    t.close()
