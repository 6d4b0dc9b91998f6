"""The official recipes set the official learning rate at every epoch (optim.schedule: per_epoch_timm).

The reference is the `train_lr` column of every released log (qhfan/RMT RMT_log/*.txt, kept in
rmt_dist/reference/official_logs.json to 6 significant digits): in qhfan/RMT
`classfication_release/engine.py` and `classification_token_label_release/engine.py` it is the
mean of `optimizer.param_groups[0]["lr"]` over the epoch's steps, i.e. the lr epoch e trained
with. Each recipe is built from its YAML through the config loader at its launch size (2 nodes x
8 GPUs x 128 = 2048, peak 5e-4 x 2048 / 512 = 2e-3, as main.py's `linear_scaled_lr`).
"""

from __future__ import annotations

import math
import types
from pathlib import Path

import pytest
import torch

from rmt_dist import reference as official
from rmt_dist.config import ConfigError, derive, load_config
from rmt_dist.config.job_size import world_size
from rmt_dist.engine.optim import build_schedule

ROOT = Path(__file__).resolve().parents[1]
SPE = 625  # optimizer steps per epoch of the official runs: 1,281,167 // 2048
LOGGED_DIGITS = 6  # official_logs.json keeps the lr to 6 significant digits


def official_recipe(name: str):
    cfg = load_config(ROOT / "recipes" / f"{name}.yaml", ["run.dir=/tmp/lr_official"])
    return derive(cfg, world_size(cfg.slurm))


def printed(x: float) -> float:
    return float(f"{x:.{LOGGED_DIGITS}g}")


@pytest.mark.parametrize("run", official.names())
def test_recipe_sets_the_logged_lr_at_every_epoch(run):
    cfg = official_recipe(run)
    o = cfg.optim
    assert o.schedule == "per_epoch_timm" and cfg.run.reference == run
    assert cfg.derived.global_batch == 2048 and cfg.derived.lr == pytest.approx(2e-3, rel=1e-12)
    ref = official.reference(run)
    sched = build_schedule(cfg, SPE)
    # The run is as long as the log: 300 epochs (plain) or 310 (starred), no cool-down.
    assert o.epochs + o.cooldown_epochs == (310 if run.endswith("_tokenlabel") else 300)
    assert sched.total_steps == (o.epochs + o.cooldown_epochs) * SPE
    assert (
        ref["epoch"][-1] <= o.epochs + o.cooldown_epochs - 1
    )  # rmt_s's log stops at 286, rmt_b/l miss one line
    worst = 0.0
    for epoch, logged in zip(ref["epoch"], ref["train_lr"]):
        first, last = epoch * SPE, (epoch + 1) * SPE - 1
        ours = sched(first)
        # timm steps once per epoch: the lr is the same at every step of an epoch.
        assert {sched(s) for s in (first, first + 1, first + SPE // 2, last)} == {ours}, f"epoch {epoch}"
        assert printed(ours) == logged, f"{run} epoch {epoch}: ours {ours!r}, the log {logged!r}"
        worst = max(worst, abs(ours - logged) / logged)
    assert worst <= 0.5 * 10 ** (1 - LOGGED_DIGITS)  # rounding to 6 digits, nothing more
    print(f"{run}: {len(ref['epoch'])} epochs, worst relative difference to the 6-digit log {worst:.2e}")


def test_per_epoch_timm_is_timms_cosine_stepped_like_main_py():
    """Bit-exact against timm's own scheduler, driven as both main.py files drive it:
    `lr_scheduler, _ = create_scheduler(args, optimizer)`, train epoch e, `lr_scheduler.step(e)`.
    (The installed timm's CosineLRScheduler._get_lr is that of v0.9.10; v0.4.5-v0.4.12 compute the same.)"""
    from timm.scheduler import create_scheduler

    for epochs, warmup, cooldown in [(300, 5, 10), (310, 5, 10), (12, 0, 10)]:
        cfg = derive(
            load_config(
                ROOT / "recipes/smoke.yaml",
                [
                    "run.dir=/tmp/x",
                    "optim.schedule=per_epoch_timm",
                    f"optim.epochs={epochs}",
                    f"optim.warmup_epochs={warmup}",
                    f"optim.cooldown_epochs={cooldown}",
                ],
            ),
            16,
        )
        o = cfg.optim
        args = types.SimpleNamespace(
            sched="cosine",
            epochs=o.epochs,
            lr=cfg.derived.lr,
            warmup_lr=o.warmup_lr,
            min_lr=o.min_lr,
            warmup_epochs=o.warmup_epochs,
            cooldown_epochs=cooldown,  # main.py passes 10 and drops the epoch count it returns
            decay_rate=0.1,
            lr_noise=None,
            seed=0,
        )
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)
        timm_sched, _ = create_scheduler(args, opt)
        sched = build_schedule(cfg, steps_per_epoch=7)
        for epoch in range(o.epochs + o.cooldown_epochs):  # the tail: lr_min after the cycle
            assert sched(epoch * 7) == opt.param_groups[0]["lr"], (epochs, warmup, epoch)
            timm_sched.step(epoch)


def test_per_epoch_timm_warmup_lag_and_tail():
    cfg = derive(
        load_config(
            ROOT / "recipes/smoke.yaml",
            [
                "run.dir=/tmp/x",
                "optim.schedule=per_epoch_timm",
                "optim.epochs=10",
                "optim.warmup_epochs=2",
                "optim.cooldown_epochs=2",
            ],
        ),
        2,
    )
    o, peak = cfg.optim, cfg.derived.lr
    sched = build_schedule(cfg, steps_per_epoch=4)
    per_epoch = [sched(4 * e) for e in range(12)]
    # Epochs 0 and 1 both at the warm-up start (the scheduler's initial value, then sched(0)).
    assert per_epoch[:3] == [o.warmup_lr, o.warmup_lr, pytest.approx((o.warmup_lr + peak) / 2)]
    # The cosine counts from epoch 0 (warm-up laid over its start): it never reaches the peak.
    assert per_epoch[3] == pytest.approx(
        o.min_lr + 0.5 * (peak - o.min_lr) * (1 + math.cos(math.pi * 2 / 10))
    )
    assert max(per_epoch) < peak
    assert per_epoch[10] > o.min_lr == per_epoch[11]  # epoch 10 trains at sched(9); after the cycle: min_lr
    assert sched.total_steps == 48
    # No warm-up: timm leaves the optimizer at the peak for epoch 0.
    flat = build_schedule(
        derive(
            load_config(
                ROOT / "recipes/smoke.yaml",
                ["run.dir=/x", "optim.schedule=per_epoch_timm", "optim.warmup_epochs=0"],
            ),
            2,
        ),
        4,
    )
    assert flat(0) == flat(3) == flat(4) == cfg.derived.lr


def test_schedule_key_is_validated_and_defaults_to_per_step():
    assert load_config(ROOT / "recipes/smoke.yaml", ["run.dir=/x"]).optim.schedule == "per_step"
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / "recipes/smoke.yaml", ["run.dir=/x", "optim.schedule=per_epoch"])
    msg = str(e.value)
    assert "optim.schedule" in msg and "per_step" in msg and "per_epoch_timm" in msg and "\n" not in msg


def test_build_schedule_refuses_an_empty_epoch():
    cfg = derive(load_config(ROOT / "recipes/smoke.yaml", ["run.dir=/x"]), 2)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        build_schedule(cfg, 0)


def test_trainer_holds_the_epoch_lr_under_accumulation(tmp_path_factory, tmp_path):
    """The engine's epoch is counted in optimizer steps (loader batches // optim.accum_steps): the
    lr the optimizer gets changes only when the epoch does, and is the official value of that epoch."""
    from test_engine_support import config, digits_dir

    from rmt_dist.engine.distributed import init_distributed, shutdown_distributed
    from rmt_dist.engine.trainer import Trainer

    digits = digits_dir(tmp_path_factory)
    overrides = ["optim.schedule=per_epoch_timm", "optim.accum_steps=2", "data.batch_size=16"]
    cfg = config(tmp_path / "run", "ddp", "checkpoint.resume=false", *overrides, data=digits)
    info = init_distributed()
    try:
        t = Trainer(derive(cfg, 1), info)
        spe = t.steps_per_epoch
        assert spe == t.train_loader.steps_per_epoch // 2 >= 2 and t.schedule.steps_per_epoch == spe
        it = t.train_loader.epoch(0)
        seen = []
        for epoch, step_in_epoch in [(1, spe - 1), (2, 0)]:  # the last step of epoch 1, the first of 2
            t.state.epoch, t.state.step_in_epoch = epoch, step_in_epoch
            t.train_step([next(it), next(it)])
            seen.append(t.strategy.optimizer.param_groups[0]["lr"])
        t.close()
    finally:
        shutdown_distributed(info)
    o = cfg.optim
    assert seen[0] == o.warmup_lr  # epoch 1 still trains at the warm-up start (the one-epoch lag)
    assert seen[1] == t.schedule.epoch_value(1) > o.warmup_lr
