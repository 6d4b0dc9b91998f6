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
    # A dry run lists every check and what would be submitted, and exits as the submission would.
    assert r.returncode == 2, r.stderr
    assert (
        r.stderr.strip()
        == "error: model.num_classes: 3 but data.train has 10 classes; set model.num_classes=10"
    )
    assert "pre-flight: 1 check(s) would fail; a submission would be refused" in r.stdout
    assert "\nok          data.train: " in r.stdout and "would fail  model.num_classes: 3 but" in r.stdout
    assert "#SBATCH --nodes=1" in r.stdout
    # A sweep's dry run: every point listed, the first failing point's line, exit 2.
    r = subprocess.run(
        [*base, f"data.train={train}", "--sweep", "model.num_classes=10,3", "--dry-run"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith("error: sweep point 'smoke model.num_classes=3': model.num_classes: 3 but")
    assert "# point smoke model.num_classes=10" in r.stdout and "nothing would be submitted" in r.stdout


# --- the run dir: a live holder, resume=false over an earlier run, another strategy/model ----


def fake_squeue(bin_dir: Path, rows: list[str], collapsed: list[str] | None = None, rc: int = 0) -> str:
    """A `squeue` for PATH: prints `rows` ("%A|%i|%T|%k") when called with -r and `collapsed`
    (default: `rows`) without, as real squeue shows a pending array as one row; exits `rc`.
    Returns the PATH to use."""
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "rows_r").write_text("".join(r + "\n" for r in rows))
    (bin_dir / "rows").write_text("".join(r + "\n" for r in (rows if collapsed is None else collapsed)))
    script = bin_dir / "squeue"
    script.write_text(
        "#!/bin/sh\n"
        f'[ {rc} = 0 ] || {{ echo "slurm_load_jobs error: Unable to contact slurm controller" >&2; exit {rc}; }}\n'
        f'for a in "$@"; do [ "$a" = -r ] && exec cat {bin_dir}/rows_r; done\n'
        f"exec cat {bin_dir}/rows\n"
    )
    script.chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def hold_lock(run_dir: Path, host: str | None = None, job: str | None = None) -> subprocess.Popen:
    """A real process holding run_dir's RunDirLock (its record naming `host` and SLURM `job`)."""
    pose = f"socket.gethostname = lambda: {host!r}\n" if host else ""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, time\n"
            "from rmt_dist.launching.rundir import RunDirLock\n"
            f"{pose}RunDirLock({str(run_dir)!r}).acquire(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**env, **({"SLURM_JOB_ID": job} if job else {})},
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def stop(proc: subprocess.Popen) -> None:
    proc.kill()  # -9: no release, its record stays behind
    proc.wait()


def fake_checkpoint(run_dir: Path, step: int, cfg, **train_state) -> Path:
    """A sealed checkpoint as the cheap checks see it (train_state.json + COMPLETE), no torch."""
    d = run_dir / "checkpoints" / f"step_{step:08d}"
    d.mkdir(parents=True)
    ts = {
        "step": step,
        "epoch": 0,
        "step_in_epoch": step,
        "world_size": 1,
        "global_batch": cfg.derived.global_batch,
        "strategy": "ddp",
        "zero_stage": None,
        "model": {"name": cfg.model.name, "num_classes": cfg.model.num_classes, "token_label": False},
        **train_state,
    }
    (d / "train_state.json").write_text(json.dumps(ts))
    data = (d / "train_state.json").read_bytes()
    files = {"train_state.json": {"size": len(data), "crc32": f"{zlib.crc32(data):08x}"}}
    (d / "COMPLETE").write_text(json.dumps({"step": step, "files": files}))
    return d


def test_preflight_refuses_a_run_dir_a_live_run_holds_and_not_a_stale_lock(digits, tmp_path, monkeypatch):
    import socket

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    bin_dir = tmp_path / "bin"
    monkeypatch.setenv("PATH", fake_squeue(bin_dir, ["4242|4242|RUNNING|x"]))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    cfg = smoke_cfg(digits, run_dir)
    assert "run.lock" not in failures(cfg)  # never locked
    holder = hold_lock(run_dir)  # a live run on this host
    try:
        line = failures(cfg)["run.lock"]
        assert f"is in use by another run (pid {holder.pid} on host {socket.gethostname()}" in line, line
        assert line.endswith(
            f"wait for it to end or stop it, or pass run.dir=<new dir>; if pid {holder.pid} on host "
            f"{socket.gethostname()} is no longer running, delete {run_dir / 'run.lock'} and launch again"
        ), line
    finally:
        stop(holder)
    assert json.loads((run_dir / "run.lock").read_text())["pid"] == holder.pid
    assert "run.lock" not in failures(cfg), "a dead pid's record must not block"
    # Another node's run: its flock is held, its SLURM job is in squeue.
    holder = hold_lock(run_dir, host="node-a", job="4242")
    try:
        assert "on host node-a, SLURM job 4242" in failures(cfg)["run.lock"]
        fake_squeue(bin_dir, [], rc=1)  # squeue does not answer: not provably gone
        assert "on host node-a, SLURM job 4242" in failures(cfg)["run.lock"]
        # Not listed proves nothing (hidden partitions, PrivateData=jobs, another cluster):
        # a held flock stays in use.
        fake_squeue(bin_dir, [])
        assert "on host node-a, SLURM job 4242" in failures(cfg)["run.lock"]
    finally:
        stop(holder)
    # Its record stays; while its job is queued again (a pending requeue) that run comes back.
    fake_squeue(bin_dir, ["4242|4242|PENDING|x"])
    assert "SLURM job 4242" in failures(cfg)["run.lock"]
    fake_squeue(bin_dir, ["4242|4242|COMPLETED|x"])
    assert "run.lock" not in failures(cfg)


def test_preflight_refuses_resume_false_over_an_earlier_run(digits, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = smoke_cfg(digits, run_dir, "checkpoint.resume=false")
    assert "checkpoint.resume" not in failures(cfg), "an empty run dir starts from step 0"
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.9}\n')
    line = failures(cfg)["checkpoint.resume"]
    assert line.startswith(
        f"run dir {str(run_dir)!r} already holds a run (2 record(s) in metrics.jsonl up to step 2)"
    )
    fake_checkpoint(run_dir, 2, cfg)
    newest = fake_checkpoint(run_dir, 4, cfg)
    (run_dir / "checkpoints" / "step_00000006").mkdir()  # an interrupted save is not a checkpoint
    line = failures(cfg)["checkpoint.resume"]
    assert f"2 checkpoint(s), the newest at step 4: {newest}" in line
    assert "checkpoint.resume=false would train over it from step 0: pass run.dir=<new dir>" in line
    assert line.endswith("or set checkpoint.resume=true to continue it")
    assert "checkpoint.resume" not in failures(smoke_cfg(digits, run_dir))  # resume=true continues it


def test_preflight_refuses_checkpoints_of_another_strategy_or_model(digits, tmp_path):
    run_dir = tmp_path / "run"
    cfg = smoke_cfg(digits, run_dir)
    fake_checkpoint(run_dir, 2, cfg, model={"name": "rmt_s", "num_classes": 10, "token_label": False})
    newest = fake_checkpoint(run_dir, 4, cfg)  # the newest decides, as in the job's resume
    assert "checkpoint.resume" not in failures(cfg)
    line = failures(smoke_cfg(digits, run_dir, "strategy.name=fsdp"))["checkpoint.resume"]
    assert line == (
        f"checkpoint {newest} was saved with strategy.name=ddp but this run has strategy.name=fsdp; "
        "relaunch with strategy.name=ddp (checkpoints do not convert between strategies), or pass "
        "run.dir=<new dir>"
    )
    (newest / "COMPLETE").unlink()  # now step 2 is the newest complete one: another model
    line = failures(cfg)["checkpoint.resume"]
    assert "holds a model with model.name=rmt_s but this run has model.name=rmt_test" in line


def test_local_launcher_runs_the_run_dir_checks_before_any_rank(digits, tmp_path):
    train, val = digits
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 3, "loss": 1.0}\n')
    cmd = [sys.executable, "launch/local.py", "recipes/smoke.yaml", f"data.train={train}", f"data.val={val}"]
    cmd += [f"run.dir={run_dir}", "--nproc", "1"]
    r = subprocess.run(
        [*cmd, "checkpoint.resume=false"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert r.returncode == 2 and "local run:" not in r.stdout, r.stdout + r.stderr
    assert r.stderr.startswith("error: checkpoint.resume: run dir ") and r.stderr.strip().count("\n") == 0
    holder = hold_lock(run_dir)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    finally:
        stop(holder)
    assert r.returncode == 2 and "local run:" not in r.stdout, r.stdout + r.stderr
    assert r.stderr.startswith(
        f"error: run.lock: run dir {str(run_dir)!r} is in use by another run (pid {holder.pid}"
    )
    assert not (run_dir / "config.yaml").exists()


def test_squeue_counts_hidden_partitions_and_survives_a_non_utf8_comment(tmp_path, monkeypatch):
    from rmt_dist.launching.squeue import job_in_queue, queued_jobs

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # Another user's comment holding a Latin-1 path; the job is in a hidden partition, which
    # squeue lists only with --all.
    (bin_dir / "rows").write_bytes(b"4242|4242|RUNNING|rmt-dist:/data/caf\xe9\n")
    script = bin_dir / "squeue"
    script.write_text(
        f'#!/bin/sh\nfor a in "$@"; do [ "$a" = --all ] && exec cat {bin_dir}/rows; done\nexit 0\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert job_in_queue("4242") is True
    [job] = queued_jobs() or []
    assert os.fsencode(job.comment) == b"rmt-dist:/data/caf\xe9"


def test_active_jobs_for_sees_every_element_of_a_pending_array(tmp_path, monkeypatch):
    from rmt_dist.launching.squeue import active_jobs_for

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "launch.json").write_text(json.dumps({"job_id": "77_1"}))
    elements = [f"77|77_{i}|PENDING|rmt-dist-sweep:{tmp_path}" for i in range(3)]
    monkeypatch.setenv(
        "PATH", fake_squeue(tmp_path / "bin", elements, [f"77|77_[0-2]|PENDING|rmt-dist-sweep:{tmp_path}"])
    )
    assert active_jobs_for(run_dir) == ["77_1"]
    fake_squeue(tmp_path / "bin", [f"77|77_{i}|COMPLETED|x" for i in range(3)])
    assert active_jobs_for(run_dir) == []


@pytest.mark.skipif(shutil.which("sbatch") is None, reason="needs a SLURM cluster (launch/slurm_local.sh)")
def test_active_jobs_for_sees_an_element_of_a_real_pending_array(tmp_path):
    from rmt_dist.launching.squeue import active_jobs_for

    if subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode != 0:
        pytest.skip("the SLURM controller does not answer")
    out = subprocess.run(
        [
            "sbatch",
            "--hold",
            "--array=0-2",
            f"--comment=rmt-dist-test:{tmp_path}",
            "-o",
            "/dev/null",
            "--wrap",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    job = out.stdout.split()[-1]
    try:
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        (run_dir / "launch.json").write_text(json.dumps({"job_id": f"{job}_1"}))
        assert active_jobs_for(run_dir) == [f"{job}_1"]  # held, so still one pending row without -r
    finally:
        subprocess.run(["scancel", job], timeout=30)


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
