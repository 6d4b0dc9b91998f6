"""`launch/slurm.py --dry-run` exits as the submission would: it also reports the checks the
submission makes outside the pre-flight (sbatch present, no job of the run dir in the queue)."""

from __future__ import annotations

import shutil
import subprocess
import sys

from test_cluster_tools import ROOT, digits, fake_squeue  # noqa: F401  (fixture)

from rmt_dist.launching.sbatch import run_dir_comment


def dry_run(digits, run_dir, path: str) -> subprocess.CompletedProcess:  # noqa: F811
    train, val = digits
    return subprocess.run(
        [
            sys.executable,
            "launch/slurm.py",
            "recipes/smoke.yaml",
            f"data.train={train}",
            f"data.val={val}",
            f"run.dir={run_dir}",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": path, "HOME": str(run_dir.parent)},
    )


def test_dry_run_reports_a_queued_job_of_the_run_dir_and_exits_2(digits, tmp_path):  # noqa: F811
    run_dir = (tmp_path / "run").resolve()
    bin_dir = tmp_path / "bin"
    fake_squeue(bin_dir, [f"501|501|PENDING|{run_dir_comment(run_dir)}"])
    (bin_dir / "cat").symlink_to(shutil.which("cat"))  # all the fake squeue needs
    path = f"{bin_dir}:{sys.prefix}/bin"  # no real SLURM commands on it
    (bin_dir / "sbatch").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    r = dry_run(digits, run_dir, path)
    assert r.returncode == 2, r.stdout[r.stdout.find("# pre-flight") :] + r.stderr
    assert r.stderr.strip() == (
        f"error: slurm.queue: job 501 is already queued or running in run dir {str(run_dir)!r}; "
        "wait for it, scancel it, or pass run.dir=<new dir>"
    )
    assert "would fail  slurm.queue: job 501" in r.stdout

    fake_squeue(bin_dir, ["502|502|RUNNING|rmt-dist:/some/other/run"])  # another run's job only
    r = dry_run(digits, run_dir, path)
    assert r.returncode == 0, r.stderr
    assert "ok          slurm: sbatch found; no job of this run dir is queued or running" in r.stdout

    (bin_dir / "sbatch").unlink()  # not on a SLURM login node: the submission would stop there
    r = dry_run(digits, run_dir, path)
    assert r.returncode == 2 and r.stderr.startswith("error: slurm.sbatch: sbatch not found"), r.stderr
