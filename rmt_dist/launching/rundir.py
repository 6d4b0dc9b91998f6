"""What a run directory holds, as far as launching is concerned.

A run dir is resumed by launching again with the same `run.dir` (requeues do exactly
that). Once a run has finished, a launcher writes `FINISHED` there, and launching into
that dir again is refused rather than silently training over it.

One run writes a run dir at a time: rank 0 holds `RunDirLock` (an flock on `run.lock`,
which records host, pid and SLURM job) for the run's life, and a second run is refused
with one line naming the holder. The kernel drops an flock when its holder dies; where
the file system keeps it (a dead node's lock on a network file system), a holder that is
provably gone is taken over: a dead pid on this host, or the same SLURM job (a requeue).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from ..atomic import atomic_write
from .errors import LaunchError

FINISHED = "FINISHED"


def is_finished(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / FINISHED).is_file()


def mark_finished(run_dir: str | os.PathLike, **info: object) -> None:
    """Written once the training entry point returned 0 with no `run.stop_after_steps` cut."""
    path = Path(run_dir) / FINISHED
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}) + "\n")


def check_not_finished(run_dir: str | os.PathLike) -> None:
    if is_finished(run_dir):
        raise LaunchError(
            f"run dir {str(run_dir)!r} holds a finished run ({FINISHED} is there); "
            f"pass run.dir=<new dir> to train again, or delete {str(run_dir)!r} to start over in it"
        )


def finished_after(rc: int, stop_after_steps: int | None) -> bool:
    """A clean exit is the end of the run unless the recipe asked to stop early."""
    return rc == 0 and stop_after_steps is None


LOCK = "run.lock"


def pid_alive(pid: int) -> bool:
    """Whether a process of this id exists on this host (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder_is_gone(holder: dict) -> bool:
    """True only when the recorded holder provably cannot be running any more."""
    host, pid, job = holder.get("host"), holder.get("pid"), holder.get("slurm_job_id")
    if host == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
        return True
    if host == socket.gethostname():
        return False  # a live pid on this host is a live run, whatever job it belongs to
    # Another host: only a later attempt of the same SLURM job (a requeue) may take over; two
    # processes of one allocation (salloc, srun --pty) share the job id and the restart count.
    mine = os.environ.get("SLURM_JOB_ID")
    try:
        my_restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        theirs = int(holder.get("slurm_restart_count") or 0)
    except ValueError:
        return False
    return bool(job) and job == mine and my_restart > theirs


def describe_holder(holder: dict) -> str:
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{job}, "
        f"since {holder.get('since', '?')}"
    )


class RunDirLock:
    """An exclusive lock on a run dir for the life of one run (held by rank 0)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self._fd: int | None = None

    def _open(self) -> int:
        return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> RunDirLock:
        """Take the lock or raise LaunchError naming the holder (OSError when the dir is not writable)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read()
            os.close(fd)
            if not _holder_is_gone(holder):
                raise LaunchError(
                    f"run dir {str(self.run_dir)!r} is in use by another run ({describe_holder(holder)}; "
                    f"{self.path}): wait for it to end or stop it, or pass run.dir=<new dir>"
                ) from None
            # A stale lock the file system kept: a fresh file (new inode) takes over.
            self.path.unlink(missing_ok=True)
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:  # another taker replaced it meanwhile
                    raise BlockingIOError
            except (BlockingIOError, FileNotFoundError):
                os.close(fd)
                raise LaunchError(
                    f"run dir {str(self.run_dir)!r} was just taken by another run "
                    f"({describe_holder(self._read())}): pass run.dir=<new dir>"
                ) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            # No flock on this file system: the record below still names the run.
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT", "0"),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except OSError as e:
            if e.errno != errno.ENOSPC:  # a full disk: the flock holds; the next write says why
                os.close(fd)
                raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)  # an empty record: nobody holds it
            except OSError:
                pass
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
