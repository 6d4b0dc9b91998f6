"""A cluster user's workflow on the local two-node SLURM (launch/slurm_local.sh): pre-flight
refusal before the queue, a bad input inside a job, a 2-point sweep with node-local staging
and a requeue, then status and compare on the finished runs. Skipped where that SLURM cannot
be started (see tests/test_slurm_launch.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_slurm_launch import (  # noqa: F401  (fixtures)
    ROOT,
    digits,
    expected_steps,
    job_field,
    metrics,
    release_requeued,
    slurm,
    smoke_overrides,
    train_steps,
    wait_done,
    wait_for,
)

from rmt_dist.launching.record import read_launch

pytestmark = pytest.mark.timeout(600)


def launch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "launch/slurm.py", *args], capture_output=True, text=True, cwd=ROOT, timeout=240
    )


def queued_comments() -> str:
    return subprocess.run(["squeue", "-h", "-o", "%k"], capture_output=True, text=True).stdout


def log_of(run_dir: Path, stream: str = "stderr") -> str:
    p = Path(read_launch(run_dir)[stream])
    return p.read_text() if p.is_file() else ""


def test_bad_data_path_is_refused_before_the_queue(slurm, digits, tmp_path):  # noqa: F811  (fixtures imported above)
    run_dir = tmp_path / "run"
    r = launch(
        "recipes/smoke.yaml",
        *smoke_overrides(digits, run_dir, epochs=1),
        "data.train=/nonexistent/train.beton",
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: data.train: /nonexistent/train.beton does not exist")
    assert "submitted" not in r.stdout and str(run_dir) not in queued_comments()
    assert not (run_dir / "slurm").exists() and not (run_dir / "launch.json").exists()  # sbatch never ran


def test_bad_input_inside_the_job_ends_it_with_that_line_and_no_requeue(slurm, digits, tmp_path):  # noqa: F811  (fixtures imported above)
    """The stage dir cannot be made on the compute nodes: every rank exits 2 from rmt_dist.train."""
    run_dir = tmp_path / "run"
    r = launch(
        "recipes/smoke.yaml", *smoke_overrides(digits, run_dir, epochs=1), "data.stage_dir=/proc/no/{node}"
    )
    assert r.returncode == 0, r.stderr
    job_id = re.search(r"submitted job (\d+)", r.stdout).group(1)
    assert wait_done(job_id, run_dir, timeout=240) == "FAILED"
    assert job_field(job_id, "Restarts") == "0" and job_field(job_id, "ExitCode") == "2:0"
    last = log_of(run_dir).strip().splitlines()[-1]  # task 0's stderr: the job's main log
    assert last.startswith("error: data.stage_dir /proc/no/n") and "set data.stage_dir to a writable" in last
    assert "Traceback" not in log_of(run_dir) and "Traceback" not in log_of(run_dir, "stdout")
    assert not (run_dir / "FINISHED").exists()


def test_sweep_with_staging_and_a_requeue_then_status_and_compare(slurm, digits, tmp_path):  # noqa: F811  (fixtures imported above)
    import submitit

    base = tmp_path / "sweep"
    over = [
        *smoke_overrides(digits, base, epochs=1),
        "slurm.nodes=1",
        f"data.stage_dir={tmp_path}/stage-{{node}}",
        "checkpoint.every_steps=5",
    ]
    r = launch("recipes/smoke.yaml", *over, "--sweep", "optim.lr=0.002,0.001")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith("smoke ")]
    assert [row[1] for row in rows] == ["optim.lr=0.002", "optim.lr=0.001"], r.stdout
    jobs = [row[2] for row in rows]
    dirs = [Path(row[3]) for row in rows]
    assert dirs == [base / "lr-0.002", base / "lr-0.001"]
    assert re.fullmatch(r"\d+_0", jobs[0]) and jobs[1] == jobs[0][:-1] + "1"  # one job array

    # Preempt point 0 mid-run: it saves, is requeued, and restarts on a node that staged already
    wait_for(
        "point 0 to pass step 5", lambda: any(s >= 5 for s in train_steps(dirs[0])), 300, jobs[0], dirs[0]
    )
    submitit.SlurmJob(folder=base / "sweep_slurm", job_id=jobs[0])._interrupt()
    wait_for(
        "point 0 to be requeued", lambda: job_field(jobs[0], "JobState") == "PENDING", 120, jobs[0], dirs[0]
    )
    release_requeued(jobs[0])
    for job, d in zip(jobs, dirs):
        assert wait_done(job, d) == "COMPLETED", log_of(d)[-3000:]
        assert (d / "FINISHED").is_file()
        assert max(r["step"] for r in metrics(d)) == expected_steps(digits, 1) * 2  # one rank per point
    assert {r["lr"] for r in metrics(dirs[0]) if "lr" in r} != {
        r["lr"] for r in metrics(dirs[1]) if "lr" in r
    }

    # Staging: each node copied the betons once; every other start on it reused the copy.
    logs = [log_of(d) for d in dirs]
    nodes = set(re.findall(r"rank 0/1 on node (n\d)", log_of(dirs[0], "stdout") + log_of(dirs[1], "stdout")))
    starts = sum(len(re.findall(r"rank 0/1 on node", log_of(d, "stdout"))) for d in dirs)
    assert starts == 3 and re.search(r"job \d+ restart 1: rank 0/1", log_of(dirs[0], "stdout"))
    copies = sum(len(re.findall(r"staged \S+/train\.beton -> .*verified", text)) for text in logs)
    reuses = sum(len(re.findall(r"train\.beton -> \S+: intact copy reused", text)) for text in logs)
    assert copies == len(nodes) and reuses == starts - copies >= 1, logs
    assert {p.name for p in tmp_path.glob("stage-*")} == {f"stage-{n}" for n in nodes}

    # status: one row per run; compare: the table, the verdict, a PNG that opens
    st = subprocess.run(
        [sys.executable, "-m", "rmt_dist.status", *map(str, dirs), "--reference", "rmt_t"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert st.returncode == 0, st.stderr
    print(st.stdout)
    lines = st.stdout.splitlines()
    assert len(lines) == 3 and lines[0].split()[:6] == ["run", "job", "requeues", "step", "epoch", "img/s"]
    total = expected_steps(digits, 1) * 2
    for line, job, d, requeues in zip(lines[1:], jobs, dirs, ("1", "0")):
        assert line.startswith(f"{d}  {job} COMPLETED, FINISHED")
        assert re.search(rf"  {requeues}\s+{total}/{total}\s+1/1\s+\d+\.\d\s+done\s+epoch 0: top1 ", line), (
            line
        )
        assert (
            f"step_{total:08d} (" in line
            and "0 bad, 0 overflow" in line
            and "rmt_t epoch 0: 0.25, gap" in line
        )
    png = tmp_path / "compare.png"
    cmp_ = subprocess.run(
        [sys.executable, "-m", "rmt_dist.compare", str(dirs[0]), "--reference", "rmt_t", "--out", str(png)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert cmp_.returncode == 0, cmp_.stderr
    print(cmp_.stdout)
    assert "run vs rmt_t" in cmp_.stdout and re.search(r"\n    0   \d+\.\d\d    0\.25 ", cmp_.stdout)
    assert "never more than 1 point behind rmt_t" in cmp_.stdout  # digits are easier than ImageNet
    from PIL import Image

    with Image.open(png) as im:
        im.verify()
        assert im.format == "PNG"
