"""checkpoint.resume=false is a fresh start for a run, not for each attempt of its SLURM job: a
requeued attempt continues its own job's checkpoints instead of ending the job at the first
preemption (the fresh-start check would refuse it with exit 2, which is never requeued)."""

from __future__ import annotations

import pytest
from test_run_safety import argv, base, copy_run, digits  # noqa: F401  (fixtures)

from rmt_dist.launching.record import record_launch
from rmt_dist.launching.requeue import own_requeue
from rmt_dist.train import main


def slurm_attempt(monkeypatch, job: str, restart: int, array: tuple[str, str] | None = None) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", job)
    monkeypatch.setenv("SLURM_RESTART_COUNT", str(restart))
    for key, value in zip(("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"), array or (None, None)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)


def test_own_requeue_names_the_launching_job_only(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    record_launch(run_dir, "300_1")  # an array element, as submitit names it
    slurm_attempt(monkeypatch, "302", 1, array=("300", "1"))
    assert own_requeue(run_dir) == "300_1"
    slurm_attempt(monkeypatch, "302", 0, array=("300", "1"))
    assert own_requeue(run_dir) is None  # the first attempt: nothing of its own to continue
    slurm_attempt(monkeypatch, "303", 1, array=("300", "2"))
    assert own_requeue(run_dir) is None  # another element launched this dir
    slurm_attempt(monkeypatch, "9", 2)
    assert own_requeue(tmp_path / "no-launch-record") == "9"  # sbatch of the user's own: the job id
    monkeypatch.delenv("SLURM_JOB_ID")
    assert own_requeue(run_dir) is None


@pytest.mark.parametrize("launched_by", ["77", "78"])
def test_resume_false_requeue_continues_its_own_checkpoints(
    base,  # noqa: F811
    digits,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
    launched_by,
):
    run_dir = copy_run(base, tmp_path)  # stopped at step 4, checkpoints at 2 and 4
    record_launch(run_dir, launched_by)
    slurm_attempt(monkeypatch, "77", 1)
    capsys.readouterr()
    rc = main(argv(run_dir, digits, "checkpoint.resume=false", "run.stop_after_steps=6"))
    err = capsys.readouterr().err
    if launched_by == "77":  # its own job: resumed, not refused, not restarted from step 0
        assert rc == 0, err[-3000:]
        assert "requeued attempt of job 77" in err and "resumed from" in err and "at step 4" in err
    else:  # the dir was launched by another job since: resume=false still refuses
        assert rc == 2, err[-3000:]
        assert "checkpoint.resume=false would train over it" in err
