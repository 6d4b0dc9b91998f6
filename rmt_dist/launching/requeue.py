"""Putting a preempted or timed-out SLURM job back in the queue, at most `max_requeues` times."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping


def restart_count(env: Mapping[str, str] | None = None) -> int:
    """How many times SLURM has already requeued this job (0 on the first run)."""
    env = os.environ if env is None else env
    return int(env.get("SLURM_RESTART_COUNT", 0) or 0)


def own_requeue(run_dir: str | os.PathLike, env: Mapping[str, str] | None = None) -> str | None:
    """The job id when this process is a requeued attempt (SLURM_RESTART_COUNT > 0) of the
    SLURM job that launched `run_dir` (its launch.json, where there is one), else None: the
    checkpoints such an attempt finds are its own job's."""
    from .record import read_launch

    env = os.environ if env is None else env
    job = env.get("SLURM_JOB_ID")
    if not job or restart_count(env) == 0:
        return None
    mine = {job}
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        mine.add(f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}")  # how submitit names it
    launched = read_launch(run_dir).get("job_id")
    if launched and str(launched) not in mine:
        return None  # the dir was launched by another job since: not this job's checkpoints
    return str(launched or job)


def job_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True)
    for field in out.stdout.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return "UNKNOWN"


def may_requeue(max_requeues: int, env: Mapping[str, str] | None = None) -> str:
    """'' when another requeue is allowed, else the reason it is not."""
    done = restart_count(env)
    if done >= max_requeues:
        return f"already requeued {done} times (slurm.max_requeues={max_requeues}; raise it to allow more)"
    return ""


def requeue(job_id: str, max_requeues: int) -> str:
    """Requeue the running job `job_id`; returns what happened, as one line for the log.

    Only a job SLURM still shows RUNNING comes back: a time-limit warning (USR2),
    submitit's `_interrupt()` and a preemption's grace period all leave it RUNNING, while
    `scancel` (whose SIGTERM the engine also answers with a save) turns it COMPLETING at
    once, and a cancelled job must stay cancelled. Not done either when the budget of
    requeues is spent. SLURM itself requeues on preemption with PreemptMode=REQUEUE; a
    second request for a job already pending just fails, harmlessly.
    """
    reason = may_requeue(max_requeues)
    state = job_state(job_id)
    if state != "RUNNING":
        reason = f"job {job_id} is {state} (cancelled or ending), not RUNNING"
    if reason:
        return f"job {job_id} not requeued: {reason}"
    out = subprocess.run(["scontrol", "requeue", str(job_id)], capture_output=True, text=True)
    if out.returncode != 0:
        return f"job {job_id} not requeued: scontrol requeue failed: {(out.stderr or out.stdout).strip()}"
    return f"job {job_id} requeued (restart {restart_count() + 1} of at most {max_requeues})"
