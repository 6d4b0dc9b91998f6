"""What SLURM's queue holds, read from `squeue` (torch-free; used before anything is queued).

`squeue -r` lists every element of a job array on its own row: without it a pending array
is one row `123_[0-3]`, and a launch.json recording element `123_1` would not be found.
`queued_jobs` returns None when squeue does not answer (not installed, controller down),
so callers can tell "the job is gone" from "we cannot know". `--all` counts jobs of hidden
partitions too. Even so, a job squeue does not list may still run (PrivateData=jobs hides
other users' jobs, another cluster may share the file system): a listed job is evidence
that it is alive, a missing one never evidence that it is gone. Output is decoded with
surrogateescape: a job comment (ours holds a raw run dir path) need not be UTF-8.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

# States in which a job is over; anything else squeue lists (pending, running, completing,
# suspended, requeued...) may still write its run dir.
FINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "TIMEOUT",
    }
)
SQUEUE_FORMAT = "%A|%i|%T|%k"  # job id (SLURM_JOB_ID), id as submitit names it (123_4), state, comment


@dataclass(frozen=True)
class QueuedJob:
    job_id: str  # %A: the job's own id, SLURM_JOB_ID inside it
    name_id: str  # %i: 123, or 123_4 for an array element (what submitit's job.job_id is)
    state: str
    comment: str

    @property
    def active(self) -> bool:
        return self.state.split("+")[0] not in FINAL_STATES

    def is_job(self, job_id: str) -> bool:
        return str(job_id) in (self.job_id, self.name_id)


def queued_jobs(timeout_s: float = 30) -> list[QueuedJob] | None:
    """Every job squeue lists, one row per array element; None when squeue does not answer."""
    try:
        out = subprocess.run(
            ["squeue", "--all", "-h", "-r", "-o", SQUEUE_FORMAT],
            capture_output=True,
            text=True,
            errors="surrogateescape",  # a job comment (a raw path) need not be UTF-8
            timeout=timeout_s,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    jobs = []
    for line in out.stdout.splitlines():
        parts = line.split("|", 3)  # the comment is last: it may hold '|'
        if len(parts) == 4:
            jobs.append(QueuedJob(parts[0].strip(), parts[1].strip(), parts[2].strip(), parts[3]))
    return jobs


def job_in_queue(job_id: str, jobs: list[QueuedJob] | None = None) -> bool | None:
    """Whether SLURM still lists `job_id` in a state that is not final; None when squeue does not answer."""
    jobs = queued_jobs() if jobs is None else jobs
    if jobs is None:
        return None
    return any(j.is_job(job_id) and j.active for j in jobs)


def active_jobs_for(run_dir: str | os.PathLike) -> list[str]:
    """Ids of queued/running jobs whose comment names this run dir (sbatch.run_dir_comment), or
    that launch.json records for it (a sweep's array elements share one comment)."""
    from .record import read_launch
    from .sbatch import run_dir_comment

    comment = run_dir_comment(Path(run_dir))
    recorded = read_launch(run_dir).get("job_id")
    return [
        j.name_id
        for j in queued_jobs() or []
        if j.active and (j.comment == comment or (recorded and j.is_job(str(recorded))))
    ]
