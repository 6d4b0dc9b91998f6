"""launch/slurm.py against a real SLURM: two slurmd "nodes" on loopback (launch/slurm_local.sh).

Skipped, with the reason, where such a SLURM cannot be started (not root, packages
missing, another slurm.conf in place). Each job trains the smoke recipe (rmt_test on the
digits betons) with one CPU task per node and gloo across the two nodes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from data_helpers import digits_betons

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
}

# Shorter than smoke's 3 epochs: job start-up (imports, FFCV's JIT) already dominates on
# 2 cores. The preemption test keeps 2, so a signal cannot miss the run's middle.
pytestmark = pytest.mark.timeout(420)


@pytest.fixture(scope="session")
def slurm() -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash not found: cannot run launch/slurm_local.sh")
    started = subprocess.run(
        ["bash", str(ROOT / "launch/slurm_local.sh")], capture_output=True, text=True, timeout=120
    )
    if shutil.which("sinfo") is None:
        pytest.skip(f"no SLURM here: {started.stdout.strip() or started.stderr.strip()}")
    nodes = subprocess.run(
        ["sinfo", "-h", "-N", "-p", "debug", "-o", "%N %T"], capture_output=True, text=True
    )
    usable = [
        line for line in nodes.stdout.splitlines() if re.search(r" (idle|mixed|allocated|completing)", line)
    ]
    if len(usable) < 2:
        pytest.skip(f"local two-node SLURM not available: {started.stdout.strip()} {nodes.stderr.strip()}")


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, Path]:
    return digits_betons(tmp_path_factory.getbasetemp())


def smoke_overrides(digits, run_dir: Path, epochs: int) -> list[str]:
    train, val = digits
    return [
        f"data.train={train}",
        f"data.val={val}",
        f"run.dir={run_dir}",
        "strategy.name=ddp",
        "strategy.backend=gloo",
        "precision=fp32",
        "slurm.nodes=2",
        "slurm.gpus_per_node=0",
        "slurm.cpus_per_task=1",
        "slurm.partition=debug",
        f"optim.epochs={epochs}",
        f"optim.warmup_epochs={epochs - 1}",
    ]


def expected_steps(digits, epochs: int) -> int:
    """smoke: 32 images per rank, 2 ranks, drop_last."""
    n = json.loads(Path(f"{digits[0]}.meta.json").read_text())["num_samples"]
    return n // (32 * 2) * epochs


def assert_ran_to_the_end(run_dir: Path, total: int) -> list[int]:
    """Every step once, in order, up to the last one, and the final checkpoint is the newest."""
    steps = train_steps(run_dir)
    assert steps == sorted(set(steps)), steps
    assert max(r["step"] for r in metrics(run_dir)) == total
    assert (run_dir / "checkpoints/latest").read_text().strip().endswith(f"{total:08d}")
    assert (run_dir / "FINISHED").is_file()
    return steps


def submit(overrides: list[str]) -> str:
    r = subprocess.run(
        [sys.executable, "launch/slurm.py", "recipes/smoke.yaml", *overrides],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr
    m = re.search(r"submitted job (\d+)", r.stdout)
    assert m, r.stdout
    assert "run dir:" in r.stdout and "_0_log.out" in r.stdout
    return m.group(1)


def job_field(job_id: str, field: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    m = re.search(rf"\b{field}=(\S*)", out)
    return m.group(1) if m else ""


def release_requeued(job_id: str) -> None:
    """Start a requeued job without waiting out SLURM's requeue BeginTime delay.

    Not `StartTime=now`: slurmd compares a job credential's creation time with the time the
    job's old credential was revoked at one-second resolution, so a restart in the same second
    as the requeue dies at launch ("Job credential revoked", state FAILED). SLURM's own delay
    exists to avoid that; two seconds is enough here.
    """
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now+2"], check=True)


def wait_for(what: str, cond, timeout: float, job_id: str, run_dir: Path):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    stacks = rank_stacks()
    subprocess.run(["scancel", job_id])
    logs = "\n".join(p.read_text()[-3000:] for p in sorted((run_dir / "slurm").glob("*_log.*")))
    pytest.fail(
        f"timed out after {timeout:.0f} s waiting for {what}; job {job_id} state "
        f"{job_field(job_id, 'JobState')}; logs:\n{logs}\nstacks of the job's Python processes:\n{stacks}"
    )


def rank_stacks() -> str:
    """py-spy dumps of the processes submitit runs (where a hung rank is stuck), if py-spy is there."""
    if shutil.which("py-spy") is None:
        return "(py-spy not installed)"
    pids = subprocess.run(
        ["pgrep", "-f", "submitit.core._submit"], capture_output=True, text=True
    ).stdout.split()
    out = []
    for pid in pids:
        r = subprocess.run(["py-spy", "dump", "--pid", pid], capture_output=True, text=True, timeout=60)
        out.append(f"--- pid {pid}\n{r.stdout}{r.stderr}")
    return "\n".join(out) or "(no submitit process left)"


def wait_done(job_id: str, run_dir: Path, timeout: float = 300) -> str:
    return wait_for(
        "the job to end",
        lambda: (s := job_field(job_id, "JobState")) in TERMINAL and s,
        timeout,
        job_id,
        run_dir,
    )


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


def train_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in metrics(run_dir) if "loss" in r]


def task_log(run_dir: Path, job_id: str, task: int) -> str:
    return "".join(p.read_text() for p in sorted((run_dir / "slurm").glob(f"{job_id}_{task}_log.*")))


def launcher_main():
    import importlib.util

    spec = importlib.util.spec_from_file_location("launch_slurm", ROOT / "launch/slurm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_partition_slurm_rejects_is_one_line_with_sbatch_message(slurm, digits, tmp_path, capsys):
    train, val = digits  # real inputs, so the pre-flight passes and sbatch is what refuses
    rc = launcher_main()(
        [
            "recipes/smoke.yaml",
            f"data.train={train}",
            f"data.val={val}",
            f"run.dir={tmp_path}",
            "slurm.partition=no_such_partition",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: sbatch rejected the job: ") and "invalid partition" in err.lower()


def test_two_node_job_trains_smoke_with_gloo(slurm, digits, tmp_path, capsys):
    run_dir = tmp_path / "run"
    overrides = smoke_overrides(digits, run_dir, epochs=1)
    job_id = submit(overrides)

    # While it is queued or running, a second launch into the same run dir is refused.
    rc = launcher_main()(["recipes/smoke.yaml", *overrides])
    err = capsys.readouterr().err
    if job_field(job_id, "JobState") in ("PENDING", "RUNNING"):
        assert rc == 2 and f"job {job_id} is already queued or running" in err

    assert wait_done(job_id, run_dir) == "COMPLETED", task_log(run_dir, job_id, 0)
    cfg = (run_dir / "config.yaml").read_text()
    assert "world_size: 2" in cfg and "backend: gloo" in cfg
    log0, log1 = task_log(run_dir, job_id, 0), task_log(run_dir, job_id, 1)
    assert "rank 0/2 on node n1" in log0 and "rank 1/2 on node n2" in log1
    assert re.search(r"master n1:\d+", log1)  # rank 1 reached rank 0's rendezvous on the first node
    assert_ran_to_the_end(run_dir, expected_steps(digits, epochs=1))
    assert any("eval/top1" in r for r in metrics(run_dir))


def test_preempted_job_is_requeued_and_resumes_from_its_checkpoint(slurm, digits, tmp_path):
    import submitit

    run_dir = tmp_path / "run"
    # resume=false (a fresh start) still lets the job's own requeue continue its checkpoints;
    # the sweep test in test_slurm_workflow.py requeues with the default resume=true.
    job_id = submit([*smoke_overrides(digits, run_dir, epochs=2), "checkpoint.resume=false"])
    total = expected_steps(digits, epochs=2)
    wait_for(
        "training to pass step 5", lambda: any(s >= 5 for s in train_steps(run_dir)), 240, job_id, run_dir
    )

    submitit.SlurmJob(folder=run_dir / "slurm", job_id=job_id)._interrupt()  # SIGTERM + USR2, as a preemption
    wait_for(
        "the requeued job to wait (BeginTime)",
        lambda: job_field(job_id, "JobState") == "PENDING",
        120,
        job_id,
        run_dir,
    )
    before = metrics(run_dir)  # what the first attempt logged, up to the step it saved at
    assert 0 < train_steps(run_dir)[-1] < total, "the job should be stopped mid-run"
    assert job_field(job_id, "Restarts") == "1"
    release_requeued(job_id)

    assert wait_done(job_id, run_dir) == "COMPLETED", task_log(run_dir, job_id, 0)
    log0 = task_log(run_dir, job_id, 0)
    assert f"job {job_id} requeued" in log0 and f"job {job_id} restart 1: rank 0/2" in log0
    assert f"requeued attempt of job {job_id}" in log0, "resume=false must not refuse its own requeue"
    m = re.search(r"resumed from \S+ at step (\d+)", log0)
    assert m and int(m.group(1)) > 0, "the second attempt must resume from a checkpoint, not step 0"
    resumed_at = int(m.group(1))
    after = metrics(run_dir)
    # One continuous series: the first attempt's records up to the checkpoint are kept as they
    # were (a restart from step 0 would have rewritten them), then the steps go on to the end.
    kept = [r for r in before if r["step"] <= resumed_at]
    assert after[: len(kept)] == kept
    assert len(after) > len(kept)
    assert_ran_to_the_end(run_dir, total)
