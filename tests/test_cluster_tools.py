"""Pre-flight checks, sweep points, status, compare, the official logs and node-local staging,
without SLURM (tests/test_slurm_workflow.py runs them on the local two-node cluster)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from data_helpers import digits_betons

from rmt_dist import reference as official
from rmt_dist.config import derive, load_config
from rmt_dist.config.job_size import world_size
from rmt_dist.launching.errors import LaunchError
from rmt_dist.launching.preflight import run_checks
from rmt_dist.launching.sweep import point_run_dirs, points

ROOT = Path(__file__).resolve().parents[1]
RECIPES_WITH_REFERENCE = [
    "rmt_t",
    "rmt_s",
    "rmt_b",
    "rmt_l",
    "rmt_s_tokenlabel",
    "rmt_b_tokenlabel",
    "rmt_l_tokenlabel",
]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, Path]:
    return digits_betons(tmp_path_factory.getbasetemp())


def smoke_cfg(digits, run_dir, *extra, world=1):
    train, val = digits
    cfg = load_config(
        ROOT / "recipes/smoke.yaml", [f"data.train={train}", f"data.val={val}", f"run.dir={run_dir}", *extra]
    )
    return derive(cfg, world)


def failures(cfg) -> dict[str, str]:
    return {c.name: c.detail for c in run_checks(cfg) if not c.ok}


# --- pre-flight -------------------------------------------------------------------------------


def test_preflight_passes_a_good_recipe_and_names_each_check(digits, tmp_path):
    checks = run_checks(smoke_cfg(digits, tmp_path / "run"))
    assert all(c.ok for c in checks), [c.line() for c in checks]
    assert {c.name for c in checks} >= {
        "data.train",
        "data.val",
        "data.val classes",
        "model.num_classes",
        "run.dir",
        "data.batch_size",
        "derived",
    }
    assert all(c.line().startswith("ok ") for c in checks)


def test_preflight_refuses_each_bad_input_with_its_fix(digits, tmp_path):
    train, val = digits
    assert (
        "does not exist"
        in failures(smoke_cfg(digits, tmp_path / "r", "data.train=/nonexistent/t.beton"))["data.train"]
    )
    assert (
        "set model.num_classes=10"
        in failures(smoke_cfg(digits, tmp_path / "r", "model.num_classes=7"))["model.num_classes"]
    )
    # val converted with another class map (same pixels, so its fingerprint still matches)
    other = tmp_path / "val_other.beton"
    shutil.copy(val, other)
    meta = json.loads(Path(f"{val}.meta.json").read_text())
    meta["classes"] = {name: (i + 1) % len(meta["classes"]) for name, i in meta["classes"].items()}
    Path(f"{other}.meta.json").write_text(json.dumps(meta))
    bad = failures(smoke_cfg(digits, tmp_path / "r", f"data.val={other}"))
    assert "--classes" in bad["data.val classes"]
    # a finished run dir, a missing init checkpoint, odd batch with mixup, a batch larger than the data
    (tmp_path / "done").mkdir()
    (tmp_path / "done/FINISHED").write_text("{}")
    assert "finished run" in failures(smoke_cfg(digits, tmp_path / "done"))["run.dir"]
    assert (
        "does not exist"
        in failures(smoke_cfg(digits, tmp_path / "r", "model.init_checkpoint=/no/w.pth"))[
            "model.init_checkpoint"
        ]
    )
    assert (
        "odd"
        in failures(smoke_cfg(digits, tmp_path / "r", "data.batch_size=31", "data.mixup=0.8"))[
            "data.batch_size"
        ]
    )
    assert (
        "lower data.batch_size"
        in failures(smoke_cfg(digits, tmp_path / "r", "data.batch_size=1024", world=4))["data.batch_size"]
    )


def test_preflight_checks_the_token_label_store_belongs_to_the_beton(digits, tmp_path):
    from rmt_dist.tokenlabel.store import StoreMeta

    store = tmp_path / "train.tokenlabel"
    extra = [
        "model.token_label=true",
        "tokenlabel.enabled=true",
        f"tokenlabel.store={store}",
        "data.mixup=0",
        "data.cutmix=0",
    ]
    assert "does not exist" in failures(smoke_cfg(digits, tmp_path / "r", *extra))["tokenlabel.store"]
    StoreMeta(
        teacher="t",
        teacher_checkpoint=None,
        img_size=32,
        topk=2,
        map_h=1,
        map_w=1,
        num_classes=10,
        beton="/elsewhere/train.beton",
        beton_fingerprint="sha256:0000",
        num_samples=1,
        complete=False,
    ).write(store)
    assert "incomplete" in failures(smoke_cfg(digits, tmp_path / "r", *extra))["tokenlabel.store"]
    meta = json.loads((store / "meta.json").read_text())
    (store / "meta.json").write_text(json.dumps({**meta, "complete": True}))
    assert (
        "generate a store for this beton"
        in failures(smoke_cfg(digits, tmp_path / "r", *extra))["tokenlabel.store"]
    )


def test_slurm_launcher_refuses_bad_input_before_sbatch_and_dry_run_lists_checks(digits, tmp_path):
    train, val = digits
    base = [
        sys.executable,
        "launch/slurm.py",
        "recipes/smoke.yaml",
        f"data.val={val}",
        f"run.dir={tmp_path}/r",
    ]
    r = subprocess.run(
        [*base, "data.train=/nonexistent/train.beton"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PATH": str(tmp_path)},
    )  # no sbatch on PATH: refused before looking
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith("error: data.train: /nonexistent/train.beton does not exist")
    r = subprocess.run(
        [*base, f"data.train={train}", "model.num_classes=3", "--dry-run"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0  # a dry run reports, it does not refuse
    assert "pre-flight: 1 check(s) would fail; a submission would be refused" in r.stdout
    assert "\nok          data.train: " in r.stdout and "would fail  model.num_classes: 3 but" in r.stdout


# --- sweeps -----------------------------------------------------------------------------------


def test_sweep_points_and_their_run_dirs():
    pts = points(["recipes/ablation_masa.yaml"], ["model.attention=masa,gmm,vicinity,vanilla"])
    assert [p.overrides for p in pts] == [
        (f"model.attention={a}",) for a in ("masa", "gmm", "vicinity", "vanilla")
    ]
    dirs = point_run_dirs(pts, [Path("/r/ablation_masa")] * 4)
    assert dirs[1] == Path("/r/ablation_masa/attention-gmm") and len(set(dirs)) == 4
    grid = points(["a.yaml", "b.yaml"], ["optim.lr=1e-3,2e-3", "run.seed=0,1"])
    assert len(grid) == 8
    assert len(set(point_run_dirs(grid, [Path("/r/x")] * 8))) == 8  # same base dir: split by recipe stem
    with pytest.raises(LaunchError, match="expected key=v1,v2"):
        points(["a.yaml"], ["model.attention"])


# --- the official logs and the recipes' lr ------------------------------------------------------


def test_official_logs_are_the_published_runs():
    src = official.source()
    assert src["repo"] == "qhfan/RMT" and len(src["commit"]) == 40
    assert set(official.names()) == set(RECIPES_WITH_REFERENCE)
    # final top-1 as released (paper: T 82.4, S* 84.8, B* 85.6, L* 86.1; the logs end a little below some)
    assert official.at_epoch("rmt_t", 299, "test_acc1") == pytest.approx(82.41, abs=0.01)
    assert official.at_epoch("rmt_l_tokenlabel", 309, "test_acc1") == pytest.approx(86.004, abs=0.01)
    assert (
        official.reference("rmt_b")["epoch"][-1] == 299 and official.at_epoch("rmt_s", 3, "test_acc1") is None
    )


@pytest.mark.parametrize("recipe", RECIPES_WITH_REFERENCE)
def test_recipe_lr_follows_its_official_log(recipe):
    """The engine's lr during epoch e vs the official train_lr of epoch e (the mean lr that epoch
    trained with), at the recipe's launch size: equal to the log's 6 digits (optim.schedule:
    per_epoch_timm; tests/test_lr_official.py checks every step of every epoch)."""
    from rmt_dist.engine.optim import build_schedule

    cfg = load_config(ROOT / f"recipes/{recipe}.yaml", [])
    cfg = derive(cfg, world_size(cfg.slurm))
    assert cfg.run.reference == recipe
    spe = 1_281_167 // cfg.derived.global_batch
    lr = build_schedule(cfg, spe)
    ref = official.reference(cfg.run.reference)
    epochs = cfg.optim.epochs + cfg.optim.cooldown_epochs
    assert ref["epoch"][-1] < epochs, (
        f"{recipe}: {epochs} epochs, the official run logged {ref['epoch'][-1] + 1}"
    )
    problems = [
        f"epoch {e}: {lr(e * spe):.6e} vs {official_lr:.6e}"
        for e, official_lr in zip(ref["epoch"], ref["train_lr"])
        if lr(e * spe) != pytest.approx(official_lr, rel=5e-6)  # the log's 6 significant digits
    ]
    assert not problems, f"{recipe}: {len(problems)} epochs off the official lr, e.g. {problems[:3]}"


# --- status and compare on a synthetic run dir ------------------------------------------------------


def fake_run(
    run_dir: Path,
    evals: list[tuple[int, float, float]],
    spe: int = 10,
    epochs: int = 300,
    reference: str | None = "rmt_t",
    done_step: int | None = None,
) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(
        f"data:\n  train: /nonexistent/train.beton\n  batch_size: 4\noptim:\n  epochs: {epochs}\n"
        f"  cooldown_epochs: 0\n  accum_steps: 1\nrun:\n  reference: {reference or 'null'}\n"
        "derived:\n  world_size: 2\n  global_batch: 8\n"
    )
    recs = []
    for ep, top1, ema in evals:
        for s in range(ep * spe + 1, (ep + 1) * spe + 1, 5):
            recs.append(
                {
                    "step": s,
                    "epoch": ep,
                    "loss": 2.0,
                    "lr": 1e-3 * (ep + 1) / 10,
                    "img_per_s": 80.0,
                    "skipped_steps": 1,
                    "bad_steps": 1,
                    "overflow_steps": 0,
                }
            )
        recs.append(
            {
                "step": (ep + 1) * spe,
                "epoch": ep,
                "eval/top1": top1,
                "eval/top5": top1 + 5,
                "eval_ema/top1": ema,
                "eval_ema/top5": ema + 5,
            }
        )
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"step": 9')
    step = done_step or evals[-1][0] * spe + spe
    ck = run_dir / f"checkpoints/step_{step:08d}"
    ck.mkdir(parents=True)
    (ck / "train_state.json").write_text("{}")
    # The manifest as engine/checkpoint.py writes it: {file: {size, crc32}}.
    manifest = {"train_state.json": {"size": 2, "crc32": f"{zlib.crc32(b'{}'):08x}"}}
    (ck / "COMPLETE").write_text(json.dumps({"step": step, "files": manifest}))
    broken = run_dir / f"checkpoints/step_{step + 5:08d}"  # newer but incomplete: not the one to name
    broken.mkdir()
    return run_dir


def test_status_prints_every_field_without_importing_torch(tmp_path):
    run = fake_run(tmp_path / "a", [(0, 0.5, 0.1), (1, 0.2, 0.1)])
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "rmt_dist.status", str(run)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and not any(m.startswith(("torch.", "timm")) for m in imported)
    out = dict(
        line.split(None, 1)
        for line in r.stdout.splitlines()
        if line.split()[0] != "last" and line.split()[0] != "vs"
    )
    assert out["step"] == "20/3000" and out["epoch"] == "2/300" and out["img/s"] == "80.0"
    assert out["eta"] == "00:04:58"  # 2980 steps x 8 images / 80 img/s
    assert out["checkpoint"].startswith("step_00000020 (")
    assert out["skipped"] == "1 bad, 0 overflow"
    assert "last eval   epoch 1: top1 0.20 top5 5.20 | EMA top1 0.10 top5 5.10" in r.stdout
    assert "vs paper    rmt_t epoch 1: 0.38, gap -0.18" in r.stdout


def test_status_one_row_per_run_and_one_line_errors(tmp_path, capsys):
    from rmt_dist.status import main

    a, b = (
        fake_run(tmp_path / "a", [(0, 1, 1)]),
        fake_run(tmp_path / "b", [(0, 2, 2), (1, 3, 3)], reference=None),
    )
    assert main([str(a), str(b)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].split()[:3] == ["run", "job", "requeues"]
    assert lines[1].startswith(str(a)) and lines[2].startswith(str(b))
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run dir") and err.count("\n") == 1


def test_compare_prints_beside_the_paper_says_where_behind_and_writes_a_png(tmp_path, capsys):
    from PIL import Image

    from rmt_dist.compare import main

    # rmt_t's log: epoch 20 top-1 67.27, epoch 21 67.55
    run = fake_run(tmp_path / "a", [(20, 66.5, 30.0), (21, 66.0, 31.0)], epochs=300)
    assert main([str(run), "--out", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert "run vs rmt_t (paper = qhfan/RMT RMT_log/rmt_t.txt)" in out
    row20 = next(line for line in out.splitlines() if line.split()[:1] == ["20"])
    assert row20.split()[1:5] == [
        "66.50",
        f"{official.at_epoch('rmt_t', 20, 'test_acc1'):.2f}",
        "30.00",
        f"{official.at_epoch('rmt_t', 20, 'test_ema_acc1'):.2f}",
    ]
    assert (
        row20.split()[6] == f"{official.at_epoch('rmt_t', 20, 'train_lr'):.4e}"
    )  # what epoch 20 trained with
    assert "more than 1 point behind rmt_t at 1 epoch(s): 21" in out and "behind by 1.55" in out
    with Image.open(tmp_path / "c.png") as im:
        im.verify()
        assert im.format == "PNG" and im.size[0] > 600
    assert main([str(run), "--reference", "rmt_x"]) == 2
    assert capsys.readouterr().err.startswith("error: --reference 'rmt_x' is not an official run")


# --- node-local staging -----------------------------------------------------------------------


def run_node(cfg_args, attempt: str, local_ranks=(0, 1)) -> list[tuple]:
    """The ranks of one node as threads (stage() takes its env explicitly); the waiting rank starts first."""
    from rmt_dist.data.stage import stage

    cfg = load_config(ROOT / "recipes/smoke.yaml", cfg_args)
    results = []

    def rank(lr: int) -> None:
        env = {
            "LOCAL_RANK": str(lr),
            "SLURM_JOB_ID": "77",
            "SLURM_RESTART_COUNT": attempt,
            "SLURMD_NODENAME": "nx",
        }
        try:
            staged = stage(cfg, env=env, wait_s=60)
            results.append((str(lr), staged.data.train, staged.data.val))
        except Exception as e:  # reported to the test
            results.append((str(lr), "error", str(e)))

    threads = [threading.Thread(target=rank, args=(lr,)) for lr in reversed(local_ranks)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(120)
    return sorted(results)


def test_staging_copies_once_per_node_reuses_an_intact_copy_and_recopies_a_bad_one(digits, tmp_path, capfd):
    train, val = digits
    args = [
        f"data.train={train}",
        f"data.val={val}",
        f"run.dir={tmp_path}/r",
        f"data.stage_dir={tmp_path}/st-{{node}}",
    ]
    first = run_node(args, "0")
    assert [r[0] for r in first] == ["0", "1"] and first[0][1:] == first[1][1:], first
    local_train = Path(first[0][1])
    assert local_train.parent == tmp_path / "st-nx" and local_train.read_bytes() == Path(train).read_bytes()
    assert Path(first[0][2]).is_file() and Path(f"{local_train}.meta.json").is_file()
    err = capfd.readouterr().err
    assert err.count("verified") == 2 and "MB/s" in err  # train + val, copied once (by local rank 0)
    mtime = local_train.stat().st_mtime_ns
    again = run_node(args, "1")  # a requeue: same node, next attempt
    assert again == first and local_train.stat().st_mtime_ns == mtime
    assert capfd.readouterr().err.count("intact copy reused") == 2
    with open(local_train, "r+b") as f:  # damage the copy: same size, other bytes
        f.seek(200)
        f.write(b"\xff" * 64)
    run_node(args, "2", local_ranks=(0,))
    err = capfd.readouterr().err
    assert "not reused (fingerprint differs" in err and local_train.read_bytes() == Path(train).read_bytes()


def test_staging_failure_reaches_the_waiting_ranks(digits, tmp_path):
    _, val = digits
    bad = run_node(
        [
            f"data.train={tmp_path}/missing.beton",
            f"data.val={val}",
            f"run.dir={tmp_path}/r",
            f"data.stage_dir={tmp_path}/st",
        ],
        "0",
    )
    assert len(bad) == 2 and all(r[1] == "error" and "missing.beton does not exist" in r[2] for r in bad), bad


@pytest.mark.parametrize("module", ["rmt_dist.status", "rmt_dist.compare"])
def test_new_commands_print_help(module):
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.startswith(f"usage: python -m {module}") and "RUN_DIR" in r.stdout


def test_preflight_reads_init_checkpoint_through_the_trainers_reader(digits, tmp_path):
    from safetensors.torch import save_file

    from rmt_dist.models.factory import create_model

    good = tmp_path / "w.safetensors"
    save_file(create_model("rmt_test", num_classes=10).state_dict(), str(good))
    checks = {
        c.name: c for c in run_checks(smoke_cfg(digits, tmp_path / "r", f"model.init_checkpoint={good}"))
    }
    assert checks["model.init_checkpoint"].ok, checks["model.init_checkpoint"].detail
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    assert (
        "does not load"
        in failures(smoke_cfg(digits, tmp_path / "r", f"model.init_checkpoint={junk}"))[
            "model.init_checkpoint"
        ]
    )
