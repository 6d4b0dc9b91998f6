"""Fast single-process checks of the engine's pure pieces (schedule, param groups, DeepSpeed
config, fault specs, checkpoint validation, metrics truncation)."""

from __future__ import annotations

import json
import logging

import pytest
import timm

import rmt_dist.models  # noqa: F401  (registers the RMT models with timm)
from rmt_dist.config import ConfigError, derive, load_config
from rmt_dist.engine.checkpoint import MARKER, TRAIN_STATE, _manifest, resume_candidates
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
    cfg = _cfg("strategy.name=deepspeed", "strategy.zero_stage=3", "optim.accum_steps=2", "optim.clip_grad=1.0",
               "precision=bf16")
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
        (path / MARKER).write_text(json.dumps({"step": step, "files": _manifest(path)}))
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
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 8)) + '{"step": 8, "lo')
    assert truncate_after(path, 5) == 3
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4, 5]
