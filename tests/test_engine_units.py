"""Fast single-process checks of the engine's pure pieces (schedule, param groups, DeepSpeed
config, fault specs, checkpoint validation, metrics truncation)."""

from __future__ import annotations

import json
import logging

import pytest
import timm

import rmt_dist.models  # noqa: F401  (registers the RMT models with timm)
from rmt_dist.config import ConfigError, derive, load_config
from rmt_dist.engine.checkpoint import MARKER, TRAIN_STATE, resume_candidates, sizes_manifest
from rmt_dist.engine.deepspeed_config import deepspeed_config
from rmt_dist.engine.faults import parse_steps
from rmt_dist.engine.metrics import truncate_after
from rmt_dist.engine.optim import build_schedule, param_groups


def _cfg(*overrides):
    return derive(load_config("recipes/smoke.yaml", ["run.dir=/tmp/x", *overrides]), 2)


def test_schedule_warmup_cosine_cooldown():
    cfg = _cfg("optim.epochs=4", "optim.warmup_epochs=1", "optim.cooldown_epochs=1")
    sched = build_schedule(cfg, steps_per_epoch=10)
    o = cfg.optim
    assert sched(0) == o.warmup_lr
    assert sched(5) == pytest.approx((o.warmup_lr + cfg.derived.lr) / 2)
    assert sched(10) == pytest.approx(cfg.derived.lr)
    assert sched(25) == pytest.approx((cfg.derived.lr + o.min_lr) / 2)
    assert sched(40) == sched(49) == o.min_lr
    assert sched.total_steps == 50
    assert all(sched(t) >= sched(t + 1) for t in range(10, 49))


def test_no_weight_decay_on_norms_biases_and_1d_params():
    model = timm.create_model("rmt_test", num_classes=10)
    decay, keep = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and keep["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    kept = {names[id(p)] for p in keep["params"]}
    assert "norm.weight" in kept and "head.bias" in kept
    assert len(decay["params"]) + len(keep["params"]) == len(list(model.parameters()))


def test_deepspeed_config_follows_the_recipe_and_guards_its_keys(tmp_path):
    cfg = _cfg(
        "strategy.name=deepspeed",
        "strategy.zero_stage=3",
        "optim.accum_steps=2",
        "optim.clip_grad=1.0",
        "precision=bf16",
    )
    ds = deepspeed_config(cfg, 2)
    assert ds["train_batch_size"] == cfg.derived.global_batch == 32 * 2 * 2
    assert ds["gradient_accumulation_steps"] == 2 and ds["gradient_clipping"] == 1.0
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"] and ds["zero_optimization"]["stage"] == 3
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"overlap_comm": True}}))
    ds = deepspeed_config(_cfg("strategy.name=deepspeed", f"strategy.deepspeed_config={user}"), 2)
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    user.write_text(json.dumps({"gradient_clipping": 5.0}))
    with pytest.raises(ConfigError, match="optim.clip_grad"):
        deepspeed_config(_cfg("strategy.name=deepspeed", f"strategy.deepspeed_config={user}"), 2)


def test_fault_steps_spec():
    assert parse_steps("5, 7-9") == {5, 7, 8, 9}
    with pytest.raises(ValueError, match="RMT_DIST_INJECT_NAN_AT_STEPS"):
        parse_steps("x")


def _fake_checkpoint(root, step, complete=True):
    path = root / f"step_{step:08d}"
    (path / "dcp").mkdir(parents=True)
    (path / "dcp" / "data").write_bytes(b"x" * 100)
    (path / TRAIN_STATE).write_text(json.dumps({"step": step}))
    if complete:
        (path / MARKER).write_text(json.dumps({"step": step, "files": sizes_manifest(path)}))
    return path


def test_resume_candidates_skip_incomplete_and_truncated(tmp_path, caplog):
    a = _fake_checkpoint(tmp_path, 10)
    b = _fake_checkpoint(tmp_path, 20)
    _fake_checkpoint(tmp_path, 30, complete=False)
    (b / "dcp" / "data").write_bytes(b"x" * 50)
    with caplog.at_level(logging.WARNING):
        assert resume_candidates(tmp_path) == [a]
    assert "step_00000030 skipped: no COMPLETE marker" in caplog.text
    assert "step_00000020 skipped: dcp/data has 50 bytes" in caplog.text


def test_metrics_truncated_past_the_resumed_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 8)) + '{"step": 8, "lo'
    )
    assert truncate_after(path, 5) == 3
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4, 5]


def test_train_state_round_trips_and_converts_a_world_size_change():
    from rmt_dist.engine.train_state import TrainState

    s = TrainState(world_size=2, global_batch=128)
    for bad in (False, True, True):
        s.count(bad=bad, overflow=False)
    s.count(bad=False, overflow=True)
    assert (s.step, s.step_in_epoch, s.bad_steps, s.bad_streak, s.overflow_steps) == (4, 4, 2, 0, 1)
    saved = s.state_dict()
    same = TrainState(world_size=2, global_batch=128)
    same.load_state_dict(saved, steps_per_epoch=10)
    assert same == s
    # Half the ranks, half the global batch: the same images seen = twice the steps.
    fewer = TrainState(world_size=1, global_batch=64)
    fewer.load_state_dict(saved, steps_per_epoch=10)
    assert (fewer.step, fewer.step_in_epoch, fewer.bad_steps, fewer.world_size) == (4, 8, 2, 1)
    # A converted position at or past the epoch's end starts the next epoch: left at the end,
    # the trainer's epoch loop would neither run nor end (it spun forever).
    fewer.load_state_dict(saved, steps_per_epoch=6)
    assert (fewer.epoch, fewer.step_in_epoch) == (1, 0)
    # Another global batch on the same world size converts too (the position counts batches).
    smaller = TrainState(world_size=2, global_batch=64)
    assert not smaller.same_layout(saved)
    smaller.load_state_dict(saved, steps_per_epoch=10)
    assert (smaller.epoch, smaller.step_in_epoch) == (0, 8)


def test_save_policy_saves_on_schedule_epoch_end_run_end_and_stops():
    from types import SimpleNamespace

    from rmt_dist.engine.save_policy import SavePolicy

    ckpt = SimpleNamespace(every_steps=4, at_epoch_end=True, save_on_signal=False)
    p = SavePolicy.from_config(ckpt, total_steps=30)
    never = dict(epoch_end=False, stopping=False, stop_requested=False)
    assert [s for s in range(1, 31) if p.wants_save(s, **never)] == [4, 8, 12, 16, 20, 24, 28, 30]
    assert p.wants_save(5, epoch_end=True, stopping=False, stop_requested=False)
    assert p.wants_save(5, epoch_end=False, stopping=True, stop_requested=False)  # run.stop_after_steps
    assert not p.wants_save(
        5, epoch_end=False, stopping=True, stop_requested=True
    )  # a signal, save_on_signal off
    p = SavePolicy.from_config(SimpleNamespace(every_steps=4, at_epoch_end=False, save_on_signal=True), 30)
    assert p.wants_save(5, epoch_end=False, stopping=True, stop_requested=True)
    assert not p.wants_save(5, epoch_end=True, stopping=False, stop_requested=False)


def test_pruning_keeps_keep_last_and_the_last_good_checkpoint_before_a_nan_streak(tmp_path):
    from rmt_dist.engine.save_policy import Saved, to_prune

    def ck(step, streak=0, complete=True):
        return Saved(tmp_path / f"step_{step}", step, complete, streak)

    older = [ck(8, streak=4), ck(6, streak=2), ck(5, complete=False), ck(4), ck(2)]
    # Saving step 10 inside the streak: keep 10 and 8 (keep_last=2), and 4, the last good one.
    assert to_prune(ck(10, streak=6), older, keep_last=2) == [
        tmp_path / n for n in ("step_6", "step_5", "step_2")
    ]
    # Outside a streak only keep_last counts.
    assert to_prune(ck(10), older, keep_last=2) == [
        tmp_path / n for n in ("step_6", "step_5", "step_4", "step_2")
    ]


def test_zero3_partitions_join_and_cut_back():
    import torch

    from rmt_dist.checkpoint_format.zero3 import join_partitions, partition_of

    full = torch.arange(10.0).view(2, 5)
    parts = [partition_of(full, r, 4) for r in range(3)]  # ceil(10 / 3) = 4, the last padded
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 0]]
    assert torch.equal(join_partitions(parts, 10, (2, 5)), full)


def test_every_strategy_offers_the_whole_protocol():
    from rmt_dist.engine.parallel.deepspeed_zero import DeepSpeedStrategy
    from rmt_dist.engine.parallel.protocol import Strategy
    from rmt_dist.engine.parallel.torch_native import DDPStrategy, FSDPStrategy

    wanted = {n for n in vars(Strategy) if not n.startswith("_")} | set(Strategy.__annotations__)
    for cls in (DDPStrategy, FSDPStrategy, DeepSpeedStrategy):
        init = cls.__init__.__code__.co_names  # attributes set in __init__ (module, scaler)
        missing = {n for n in wanted if not hasattr(cls, n) and n not in init}
        assert not missing, f"{cls.__name__} lacks {sorted(missing)}"


def test_layout_mismatch_refuses_other_strategies_and_zero_stages():
    from rmt_dist.engine.parallel.protocol import layout_mismatch

    ddp, zero2 = {"strategy": "ddp", "zero_stage": None}, {"strategy": "deepspeed", "zero_stage": 2}
    assert layout_mismatch(ddp, ddp) is None and layout_mismatch({}, zero2) is None  # old checkpoints
    assert "relaunch with strategy.name=ddp" in layout_mismatch(ddp, zero2)
    assert "relaunch with strategy.zero_stage=2" in layout_mismatch(
        zero2, {"strategy": "deepspeed", "zero_stage": 3}
    )
