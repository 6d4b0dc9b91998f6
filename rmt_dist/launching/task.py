"""The callable a SLURM job runs (one call per task): set the torch.distributed env from
SLURM's, run the training entry point, and requeue after a preemption or time-out.

How preemption plays out (submitit's `job._interrupt()`, a SLURM preemption, or the
USR2 SLURM sends `signal_delay_s` before the time limit):

* With `checkpoint.save_on_signal` (default) the engine owns SIGTERM/SIGUSR2: every rank
  stops at the next step boundary, one coordinated checkpoint is saved, and `main`
  returns the engine's "preempted" exit code. Rank 0 then asks SLURM to requeue the job
  (unless it was cancelled or slurm.max_requeues is spent) and every rank exits without
  a submitit result, so the job is not reported as done.
* Without it, submitit's own USR2 handler stays in place: rank 0 calls `checkpoint()`
  below, submitit requeues the job and exits at once; the run resumes from its latest
  periodic checkpoint.

Either way the requeued job runs this same callable again in the same run dir, and the
engine resumes from the newest complete checkpoint there.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence

import submitit

from ..atomic import atomic_write
from ..errors import EXIT_BAD_INPUT, EXIT_PREEMPTED
from .dist_env import TEARDOWN_TIMEOUT_ENV, TEARDOWN_TIMEOUT_S, torch_env_from_slurm
from .requeue import may_requeue, requeue
from .rundir import finished_after, mark_finished
from .sbatch import bad_input_marker, submitit_folder

DEFAULT_ENTRY = "rmt_dist.train:main"
# After a preemption save, ranks other than 0 wait this long before exiting: srun's
# --kill-on-bad-exit would otherwise end rank 0 (on their exit code 75) before it has asked
# SLURM to requeue the job. A requeue (or rank 0's own exit) ends them sooner.
PREEMPTED_PEER_WAIT_S = 120


def _resolve(entry: str) -> Callable[[list[str]], int]:
    module, _, func = entry.partition(":")
    return getattr(importlib.import_module(module), func or "main")


def _log(msg: str) -> None:
    print(f"[rmt-dist launch] {msg}", flush=True)


class _LastErrorLine:
    """stderr, remembering the last line that carries an `error: ...` message."""

    def __init__(self, stream) -> None:
        self._stream, self._partial, self.line = stream, "", ""

    def write(self, s: str) -> int:
        self._partial += s
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            if "error: " in line:
                self.line = line[line.index("error: ") :]
        return self._stream.write(s)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def bad_input_reported(log_folder: str, job_id: str) -> str:
    """The line a rank of this job refused its input with ('' if none did)."""
    try:
        return bad_input_marker(log_folder, job_id).read_text().strip()
    except OSError:
        return ""


def _report_bad_input(log_folder: str, job_id: str, rank: int, line: str) -> None:
    marker = bad_input_marker(log_folder, job_id)
    try:
        atomic_write(
            marker,
            (line or f"error: rank {rank} exited with code {EXIT_BAD_INPUT} (bad input; see its log)") + "\n",
        )
    except OSError:
        pass  # the rank's own log still ends with the line


def run_rank(
    recipe: str,
    overrides: Sequence[str],
    run_dir: str,
    max_requeues: int,
    stop_after_steps: int | None = None,
    entry: str = DEFAULT_ENTRY,
    log_folder: str | None = None,
) -> tuple[int, int]:
    """One SLURM task: torch env from SLURM's, the entry point, then the run dir's
    bookkeeping on rank 0 (FINISHED after a full run, a requeue after a preemption save).
    Returns (exit code, rank)."""
    dist = torch_env_from_slurm()
    os.environ.update(dist)
    # Keep intra-op threads within the CPUs SLURM gave this task.
    os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("SLURM_CPUS_PER_TASK", "1"))
    os.environ.setdefault(TEARDOWN_TIMEOUT_ENV, str(TEARDOWN_TIMEOUT_S))  # this process is the rank's own
    rank, job_id = int(dist["RANK"]), os.environ["SLURM_JOB_ID"]
    _log(
        f"job {job_id} restart {os.environ.get('SLURM_RESTART_COUNT', '0')}: rank {rank}/{dist['WORLD_SIZE']} "
        f"on node {os.environ.get('SLURMD_NODENAME', '?')} (local rank {dist['LOCAL_RANK']}), "
        f"master {dist['MASTER_ADDR']}:{dist['MASTER_PORT']}, run dir {run_dir}"
    )
    log_folder = log_folder or str(submitit_folder(run_dir))
    stderr = sys.stderr
    sys.stderr = errors = _LastErrorLine(stderr)
    try:
        rc = _resolve(entry)([recipe, *overrides])
    finally:
        sys.stderr = stderr
    if rc == EXIT_BAD_INPUT:
        _report_bad_input(log_folder, job_id, rank, errors.line)
    if rank == 0 and finished_after(rc, stop_after_steps):
        mark_finished(run_dir, job_id=job_id)
    if rank == 0 and rc == EXIT_PREEMPTED:
        refused = bad_input_reported(log_folder, job_id)
        if refused:  # another rank stopped on a bad input, and that ended the job: a requeue would too
            _log(f"job {job_id} not requeued: a rank refused its input ({refused})")
        elif shutil.which("scontrol"):
            _log(requeue(job_id, max_requeues))
        else:  # e.g. inside a container without the SLURM client: the batch script requeues on this code
            _log(f"scontrol not found here: exit code {rc} asks the batch script to requeue job {job_id}")
    return rc, rank


class TrainTask(submitit.helpers.Checkpointable):
    """`TrainTask(recipe, overrides, run_dir, max_requeues)()` inside a SLURM task.

    `overrides` must already pin `run.dir` to an absolute path, so every restart finds
    the same run dir whatever its working directory. `entry` ("module:function") exists
    for tests of the launch plumbing; runs always use rmt_dist.train:main.
    """

    def __init__(
        self,
        recipe: str,
        overrides: Sequence[str],
        run_dir: str,
        max_requeues: int,
        stop_after_steps: int | None = None,
        entry: str = DEFAULT_ENTRY,
        log_folder: str | None = None,
    ) -> None:
        self.recipe = recipe
        self.log_folder = log_folder or str(submitit_folder(run_dir))
        self.overrides = list(overrides)
        self.run_dir = run_dir
        self.max_requeues = max_requeues
        self.stop_after_steps = stop_after_steps
        self.entry = entry

    def __call__(self) -> int:
        rc, rank = run_rank(
            self.recipe,
            self.overrides,
            self.run_dir,
            self.max_requeues,
            self.stop_after_steps,
            self.entry,
            getattr(self, "log_folder", None),
        )
        if rc == 0:
            return rc
        if rc == EXIT_PREEMPTED:
            # No submitit result: the job goes on after the requeue (SLURM ends this run).
            sys.stdout.flush()
            if rank != 0:
                time.sleep(PREEMPTED_PEER_WAIT_S)
            raise SystemExit(rc)
        if rc == EXIT_BAD_INPUT:
            # The rank already printed the one-line error; a traceback below it would bury it,
            # and a bad input is not worth a requeue. SystemExit passes submitit's handler by
            # (it catches Exception) and srun's --kill-on-bad-exit ends the other ranks.
            sys.stdout.flush()
            sys.stderr.flush()
            raise SystemExit(rc)
        raise RuntimeError(f"rank {rank}: training exited with code {rc} (the log above says why)")

    # submitit reads None as "do not requeue" (core/job_environment.py _checkpoint), though its annotation omits it.
    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission | None:  # type: ignore[override]
        """Called by submitit's USR2 handler on rank 0 when the engine did not take the
        signal: resubmit the same task (it resumes from the newest complete checkpoint),
        unless slurm.max_requeues is spent (None tells submitit not to requeue)."""
        reason = may_requeue(self.max_requeues)
        refused = bad_input_reported(
            getattr(self, "log_folder", None) or str(submitit_folder(self.run_dir)),
            os.environ.get("SLURM_JOB_ID", ""),
        )
        if refused:
            reason = f"a rank refused its input ({refused})"
        if reason:
            _log(f"not requeued: {reason}")
            return None
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)
