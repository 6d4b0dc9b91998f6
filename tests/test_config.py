"""Typed recipes: inheritance, overrides, every error case, derived values, round trip."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from rmt_dist.config import (
    Config,
    ConfigError,
    DerivedConfig,
    RunPlan,
    derive,
    load_config,
    load_resolved,
    parse_override,
    save_config,
    to_yaml,
)
from rmt_dist.config.__main__ import main as config_main

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.fixture
def base(tmp_path):
    return write(tmp_path, "base.yaml", "model: {name: rmt_s}\ndata: {train: t.beton}\nrun: {dir: runs/x}\n")


@pytest.mark.parametrize("recipe", [r for r in RECIPES if not r.name.startswith("_")], ids=lambda p: p.name)
def test_every_shipped_recipe_loads(recipe):
    cfg = load_config(recipe)
    assert cfg.model.name.startswith("rmt_")


def test_tokenlabel_recipe_inherits_size_recipe():
    big = load_config(ROOT / "recipes/rmt_l.yaml")
    star = load_config(ROOT / "recipes/rmt_l_tokenlabel.yaml")
    assert star.model.name == big.model.name == "rmt_l"
    assert star.model.token_label and not big.model.token_label
    assert star.tokenlabel.enabled and star.tokenlabel.size == 7 and star.tokenlabel.dense_weight == 0.5
    assert (star.data.mixup, star.data.cutmix) == (0.0, 0.0) and big.data.mixup == 0.8
    assert (star.optim.epochs, star.optim.cooldown_epochs) == (310, 0) and big.optim.cooldown_epochs == 0
    # untouched keys come from the bases
    assert star.optim.weight_decay == big.optim.weight_decay == 0.05
    assert star.data.auto_augment == "rand-m9-mstd0.5-inc1"
    assert len((ROOT / "recipes/rmt_l_tokenlabel.yaml").read_text().splitlines()) < 40


def test_official_hyperparameters_and_derived_values():
    cfg = derive(load_config(ROOT / "recipes/rmt_l.yaml"), world_size=16)
    assert cfg.derived.global_batch == 2048
    assert cfg.derived.lr == pytest.approx(2e-3)  # 5e-4 x 2048 / 512
    assert cfg.derived.ema_decay == pytest.approx(0.99996**4)
    assert (cfg.optim.warmup_epochs, cfg.optim.warmup_lr, cfg.optim.min_lr, cfg.optim.epochs) == (
        5,
        1e-6,
        1e-5,
        300,
    )
    assert cfg.data.reprob == 0.25 and cfg.data.label_smoothing == 0.1 and cfg.data.repeated_aug


def test_list_of_bases_merges_left_to_right_and_deep(tmp_path, base):
    write(tmp_path, "b2.yaml", "optim: {lr: 1.0e-3, weight_decay: 0.1}\nmodel: {num_classes: 10}\n")
    r = write(tmp_path, "r.yaml", "base: [base.yaml, b2.yaml]\noptim: {weight_decay: 0.2}\n")
    cfg = load_config(r)
    assert cfg.model.name == "rmt_s" and cfg.model.num_classes == 10
    assert cfg.optim.lr == 1e-3 and cfg.optim.weight_decay == 0.2
    assert cfg.optim.epochs == 300  # schema default survives


def test_yaml_exponent_without_dot_is_a_float(tmp_path, base):
    r = write(tmp_path, "r.yaml", "base: base.yaml\noptim: {lr: 5e-4}\n")  # PyYAML reads this as a string
    assert load_config(r).optim.lr == 5e-4


def test_environment_variables_expand(tmp_path, base, monkeypatch):
    r = write(tmp_path, "r.yaml", "base: base.yaml\ndata: {train: '${MY_DATA:-/d}/train.beton'}\n")
    assert load_config(r).data.train == "/d/train.beton"
    monkeypatch.setenv("MY_DATA", "/scratch")
    assert load_config(r).data.train == "/scratch/train.beton"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("optim.lr=1e-3", ("optim.lr", 1e-3)),
        ("data.batch_size=64", ("data.batch_size", 64)),
        ("model.token_label=true", ("model.token_label", True)),
        ("data.scale=[0.35, 1.0]", ("data.scale", [0.35, 1.0])),
        ("optim.clip_grad=null", ("optim.clip_grad", None)),
        ("optim.clip_grad=None", ("optim.clip_grad", None)),
        ("run.dir=runs/a=b", ("run.dir", "runs/a=b")),
    ],
)
def test_parse_override_types(text, expected):
    assert parse_override(text) == expected


def test_overrides_apply_typed(base):
    cfg = load_config(
        base,
        [
            "optim.lr=1e-3",
            "data.batch_size=64",
            "optim.clip_grad=5",
            "data.val=null",
            "slurm.additional_parameters={exclusive: true}",
        ],
    )
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.data.batch_size == 64 and cfg.optim.clip_grad == 5.0 and cfg.data.val is None
    assert cfg.slurm.additional_parameters == {"exclusive": True}


def err(recipe, overrides=()) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(recipe, overrides)
    msg = str(e.value)
    assert "\n" not in msg, "errors are one line"
    return msg


def test_unknown_key_in_file_names_file_key_and_suggestion(tmp_path, base):
    r = write(tmp_path, "r.yaml", "base: base.yaml\noptim: {lrr: 0.1}\n")
    msg = err(r)
    assert str(r) in msg and "optim.lrr" in msg and "did you mean optim.lr" in msg


def test_unknown_key_in_base_names_the_base_file(tmp_path):
    b = write(tmp_path, "b.yaml", "model: {name: rmt_s, nam_classes: 3}\n")
    r = write(tmp_path, "r.yaml", "base: b.yaml\ndata: {train: x}\nrun: {dir: y}\n")
    msg = err(r)
    assert str(b) in msg and "model.nam_classes" in msg and "model.num_classes" in msg


def test_unknown_override_and_unknown_section(base):
    msg = err(base, ["optim.lrr=0.1"])
    assert "command line" in msg and "did you mean optim.lr" in msg
    assert "did you mean strategy" in err(base, ["stratgy.name=ddp"])


def test_wrong_type(tmp_path, base):
    msg = err(base, ["data.batch_size=big"])
    assert "data.batch_size" in msg and "int" in msg and "'big'" in msg
    r = write(tmp_path, "r.yaml", "base: base.yaml\noptim: {lr: fast}\n")
    msg = err(r)
    assert str(r) in msg and "optim.lr" in msg and "float" in msg
    assert "optim" in err(base, ["optim=3"])


def test_missing_required_value(tmp_path):
    r = write(tmp_path, "r.yaml", "model: {name: rmt_s}\ndata: {train: t.beton}\n")
    msg = err(r)
    assert str(r) in msg and "run.dir" in msg and "missing required" in msg


def test_invalid_choice_lists_valid_names(base):
    msg = err(base, ["strategy.name=zero"])
    assert "strategy.name" in msg and "'zero'" in msg and "ddp, fsdp, deepspeed" in msg
    assert "fp32, bf16, fp16" in err(base, ["precision=fp8"])


def test_missing_base_file(tmp_path):
    r = write(tmp_path, "r.yaml", "base: nowhere.yaml\n")
    msg = err(r)
    assert str(r) in msg and "nowhere.yaml" in msg and "does not exist" in msg


def test_missing_recipe_file(tmp_path):
    assert "does not exist" in err(tmp_path / "nope.yaml")


def test_cycle_of_bases(tmp_path):
    write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: c.yaml\n")
    write(tmp_path, "c.yaml", "base: a.yaml\n")
    msg = err(tmp_path / "a.yaml")
    assert "cycle" in msg and "a.yaml" in msg and "c.yaml" in msg


def test_cross_field_checks(base):
    assert "multiple of 32" in err(base, ["data.img_size=100"])
    assert "slurm.nodes must be >= 1, got 0" in err(base, ["slurm.nodes=0"])
    assert "zero_stage" in err(base, ["strategy.name=deepspeed", "strategy.zero_stage=4"])
    assert "model.token_label" in err(base, ["tokenlabel.enabled=true", "tokenlabel.store=s"])
    assert "data.mixup=0" in err(
        base, ["tokenlabel.enabled=true", "tokenlabel.store=s", "model.token_label=true"]
    )


def test_resolved_config_round_trip(tmp_path):
    cfg = derive(
        load_config(ROOT / "recipes/rmt_l_tokenlabel.yaml", ["optim.lr=1e-3", "data.scale=[0.5,1]"]), 32
    )
    save_config(cfg, tmp_path / "run/config.yaml")
    again = load_resolved(tmp_path / "run/config.yaml")
    assert again == cfg
    assert again.derived.lr == pytest.approx(1e-3 * 4096 / 512)


def test_cli_prints_resolved_recipe(capsys):
    assert config_main(["recipes/rmt_l_tokenlabel.yaml", "optim.lr=1e-3"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.001" in out and "name: rmt_l" in out and "global_batch: 2048" in out
    assert config_main(["recipes/rmt_l.yaml", "optim.lrr=1"]) == 2
    assert "did you mean optim.lr" in capsys.readouterr().err


def test_cli_as_a_module_exits_nonzero_with_one_line():
    p = subprocess.run(
        [sys.executable, "-m", "rmt_dist.config", "recipes/rmt_l.yaml", "strategy.name=zero"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "ddp, fsdp, deepspeed" in p.stderr


# --- frozen config, typed run plan, removed keys ----------------------------------------------------


def test_config_is_frozen_and_variants_come_from_replace(base):
    cfg = load_config(base)
    for section in dataclasses.fields(cfg):  # every section, and the top level
        value = getattr(cfg, section.name)
        target, name = (
            (value, dataclasses.fields(value)[0].name)
            if dataclasses.is_dataclass(value)
            else (cfg, "precision")
        )
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(target, name, getattr(target, name))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data = cfg.data
    assert isinstance(cfg.data.scale, tuple) and isinstance(
        cfg.optim.betas, tuple
    )  # no in-place edits either
    run = derive(cfg, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.derived.lr = 1.0
    other = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=7))
    assert other.data.batch_size == 7 and cfg.data.batch_size == 128


def test_derive_returns_a_typed_run_plan(base):
    cfg = load_config(base, ["data.batch_size=64", "optim.accum_steps=2"])
    assert type(cfg) is Config and not hasattr(cfg, "derived"), "a recipe has no run plan until derive"
    run = derive(cfg, 4)
    assert isinstance(run, DerivedConfig) and isinstance(run.derived, RunPlan)
    assert run.derived == RunPlan(world_size=4, global_batch=512, lr=pytest.approx(5e-4), ema_decay=0.99996)
    hints = typing.get_type_hints(RunPlan)
    assert hints == {"world_size": int, "global_batch": int, "lr": float, "ema_decay": float}
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(RunPlan)), "no None placeholders"
    assert all(getattr(run, f.name) == getattr(cfg, f.name) for f in dataclasses.fields(Config))
    assert derive(run, 8).derived.global_batch == 1024, "re-deriving replaces the plan"
    msg = err(base, ["derived.lr=0.1"])
    assert msg.startswith("command line: derived is computed at launch") and "optim.lr" in msg


@pytest.mark.parametrize(
    "key, fix",
    [
        ("data.os_cache", "memory map"),
        ("tokenlabel.teacher", "--teacher"),
        ("tokenlabel.teacher_checkpoint", "--checkpoint"),
        ("tokenlabel.teacher_img_size", "--img-size"),
        ("tokenlabel.topk", "--topk"),
    ],
)
def test_removed_keys_are_refused_with_the_reason(tmp_path, base, key, fix):
    section, name = key.split(".")
    r = write(tmp_path, "r.yaml", f"base: base.yaml\n{section}:\n  {name}: 5\n")
    msg = err(r)
    assert msg.startswith(f"{r}: {key} was removed: ") and fix in msg and "delete it from the recipe" in msg
    msg = err(base, [f"{key}=5"])
    assert msg.startswith(f"command line: {key} was removed: ") and fix in msg


def test_old_config_yaml_with_removed_keys_still_loads(tmp_path, caplog, monkeypatch):
    """A run dir written before the removal still exports, evaluates and reports (load_resolved)."""
    old = ROOT / "tests/fixtures/config_before_removed_keys.yaml"
    monkeypatch.setattr(logging.getLogger("rmt_dist"), "propagate", True)  # run() turns it off
    with caplog.at_level(logging.WARNING, logger="rmt_dist.config"):
        cfg = load_resolved(old)
    removed = [
        "data.os_cache",
        "tokenlabel.teacher",
        "tokenlabel.teacher_checkpoint",
        "tokenlabel.teacher_img_size",
        "tokenlabel.topk",
    ]
    warned = {
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
    }  # a set: handlers may repeat
    assert len(warned) == len(removed) and all(
        any(f"ignoring {k} (removed: " in w for w in warned) for k in removed
    )
    want = derive(load_config(ROOT / "recipes/smoke.yaml", ["run.dir=runs/smoke_old"]), 2)
    assert cfg == want  # every other value as written, the plan included
    save_config(cfg, tmp_path / "config.yaml")  # the run's next write drops them for good
    assert (
        "os_cache" not in (tmp_path / "config.yaml").read_text()
        and load_resolved(tmp_path / "config.yaml") == cfg
    )


def test_config_yaml_without_a_run_plan_is_refused(tmp_path, base):
    (tmp_path / "config.yaml").write_text(to_yaml(load_config(base)))
    with pytest.raises(ConfigError, match="no derived section"):
        load_resolved(tmp_path / "config.yaml")
    tree = yaml.safe_load(to_yaml(derive(load_config(base), 2)))
    del tree["derived"]["lr"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match="missing required value derived.lr"):
        load_resolved(tmp_path / "config.yaml")
