"""What a run directory holds, as far as launching is concerned.

A run dir is resumed by launching again with the same `run.dir` (requeues do exactly
that). Once a run has finished, a launcher writes `FINISHED` there, and launching into
that dir again is refused rather than silently training over it.

One run writes a run dir at a time: rank 0 holds `RunDirLock` (an flock on `run.lock`,
which records host, pid and SLURM job) for the run's life, and a second run is refused
with one line naming the holder. The kernel drops an flock when its holder dies; where
the file system keeps it (a dead node's lock on a network file system), a holder is taken
over only on positive proof that it is gone: a dead pid on this host, or a later attempt of
the same SLURM job (a requeue). A job `squeue` does not list proves nothing (hidden
partitions, PrivateData=jobs, another cluster on the same file system), so any other kept
lock is refused with the manual fix (delete `run.lock` once that pid is known dead). After
writing its record a taker checks that `run.lock` is still the file it locked (another
taker may have replaced it meanwhile). Where flock is per host (NFS `local_lock=flock`), a
record of another host's job that squeue lists as active is refused. Where the file system
has no flock at all, the record alone decides by the same rule (and a record naming this
very pid that this process does not hold is stale: pids are reused). A launcher's
pre-flight asks the same question without taking the lock (`check_not_in_use`); there a
job squeue lists as active counts as alive even when no flock is held (a pending requeue).

`checkpoint.resume=false` starts a run from step 0; in a run dir that already holds
checkpoints or metrics that would train over them (metrics.jsonl truncated, the old
checkpoints replaced), so `check_fresh_start` refuses it before anything is written.
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


def _attempt(value: object) -> int | None:
    """A SLURM_RESTART_COUNT as `requeue.restart_count` reads it (empty: 0); None when unreadable."""
    from .requeue import restart_count  # torch-free

    try:
        return restart_count({"SLURM_RESTART_COUNT": "" if value is None else str(value)})
    except ValueError:
        return None


def _later_attempt_of_this_job(holder: dict) -> bool:
    """This process is a later attempt (a requeue) of the holder's SLURM job: SLURM starts a
    requeued attempt only once the earlier one has ended. Two processes of one allocation
    (salloc, srun --pty) share the job id and the restart count, so they do not count."""
    job = holder.get("slurm_job_id")
    if not job or str(job) != os.environ.get("SLURM_JOB_ID"):
        return False
    mine, theirs = (
        _attempt(os.environ.get("SLURM_RESTART_COUNT")),
        _attempt(holder.get("slurm_restart_count")),
    )
    return mine is not None and theirs is not None and mine > theirs


def _holder_is_gone(holder: dict) -> bool:
    """True only on positive proof that the recorded holder cannot be running any more: a
    later attempt of its SLURM job, or a dead pid on this host. A job `squeue` does not list
    proves nothing (hidden partitions, PrivateData=jobs, another cluster on the same file
    system), so a holder on another host is never judged gone by it."""
    if _later_attempt_of_this_job(holder):
        return True
    pid = holder.get("pid")
    if holder.get("host") == socket.gethostname() and isinstance(pid, int):
        return not pid_alive(pid)
    return False


# Run dirs whose RunDirLock this process holds now: a record naming this pid is ours only then.
_HELD_HERE: set[Path] = set()


def _record_is_stale(holder: dict, run_dir: Path) -> bool:
    """Where the record alone decides (no flock): the rule of `_holder_is_gone`, and a record
    naming this very pid on this host that this process does not hold is a dead run's (pids
    are reused, in containers often the same one)."""
    if holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid():
        return run_dir.resolve() not in _HELD_HERE
    return _holder_is_gone(holder)


def _listed_active(holder: dict) -> bool:
    """Positive evidence of liveness: squeue lists the holder's SLURM job in a state not final."""
    from .squeue import job_in_queue

    job = holder.get("slurm_job_id")
    return bool(job) and job_in_queue(str(job)) is True


def describe_holder(holder: dict) -> str:
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{job}, "
        f"since {holder.get('since', '?')}"
    )


# flock is missing on some network file systems: the record alone must then keep a second run out.
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _parse_record(raw: bytes) -> dict:
    try:
        record = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _read_record(path: Path) -> dict:
    return _parse_record(_read_bytes(path))


def _other_job_active(holder: dict) -> bool:
    """The record names a SLURM job other than this one that squeue lists as active."""
    job = holder.get("slurm_job_id")
    return bool(job) and str(job) != os.environ.get("SLURM_JOB_ID") and _listed_active(holder)


# How long a taker of a stale-looking kept lock waits for a new holder to write its record.
_TAKEOVER_SETTLE_S = 0.2


def _in_use(run_dir: Path, holder: dict, note: str = "") -> LaunchError:
    job = f" (SLURM job {holder['slurm_job_id']})" if holder.get("slurm_job_id") else ""
    who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{job}"
    return LaunchError(
        f"run dir {str(run_dir)!r} is in use by another run ({describe_holder(holder)}; "
        f"{run_dir / LOCK}{note}): wait for it to end or stop it, or pass run.dir=<new dir>; "
        f"if {who} is no longer running, delete {run_dir / LOCK} and launch again"
    )


def live_holder(run_dir: str | os.PathLike) -> dict | None:
    """The record of a run that may still hold `run_dir`, asked without taking the lock (a
    launcher's pre-flight); None when the dir is free or its holder is provably gone."""
    path = Path(run_dir) / LOCK
    holder = _read_record(path)
    if not holder or _record_is_stale(holder, Path(run_dir)):
        return None  # released (an empty record), or a dead holder's record
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError:
        return holder  # cannot look: the record decides
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a shared probe; closing the fd drops it
    except OSError:
        return holder  # held now (BlockingIOError), or no flock here: the record decides
    finally:
        os.close(fd)
    # Nobody holds the flock here: the holder died and left its record, or holds a per-host
    # flock on another host (NFS local_lock=flock). A job of it squeue lists (running, or a
    # pending requeue that will come back to this dir) is in use.
    return holder if _listed_active(holder) else None


def check_not_in_use(run_dir: str | os.PathLike) -> None:
    """Raise LaunchError naming the holder when a live run holds `run_dir`'s lock."""
    holder = live_holder(run_dir)
    if holder is not None:
        raise _in_use(Path(run_dir), holder)


def existing_run(run_dir: str | os.PathLike) -> str | None:
    """What a run from step 0 would train over in `run_dir` (sealed checkpoints, metrics
    records), in words; None for an empty or fresh dir. Torch-free."""
    from ..checkpoint_format.dirs import MARKER, METRICS_FILE, list_step_dirs, step_of

    run_dir = Path(run_dir)
    found = []
    sealed = [p for p in list_step_dirs(run_dir / "checkpoints") if (p / MARKER).is_file()]
    if sealed:
        found.append(f"{len(sealed)} checkpoint(s), the newest at step {step_of(sealed[0])}: {sealed[0]}")
    steps = []
    try:
        lines = [line for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()]
    except OSError:
        lines = []
    for line in lines:
        try:
            steps.append(int(json.loads(line).get("step", 0)))
        except (ValueError, TypeError, AttributeError):
            continue
    if lines:
        upto = f" up to step {max(steps)}" if steps else ""
        found.append(f"{len(lines)} record(s) in {METRICS_FILE}{upto}")
    return "; ".join(found) or None


def check_fresh_start(run_dir: str | os.PathLike, resume: bool) -> None:
    """`checkpoint.resume=false` must not train over an earlier run: raise LaunchError (one
    line: the dir, what it holds, the fixes) before anything in it is changed."""
    if resume:
        return
    held = existing_run(run_dir)
    if held is None:
        return
    d = str(run_dir)
    raise LaunchError(
        f"run dir {d!r} already holds a run ({held}) and checkpoint.resume=false would train over it "
        f"from step 0: pass run.dir=<new dir>, or remove {d}/checkpoints and {d}/metrics.jsonl to start "
        "over in it, or set checkpoint.resume=true to continue it"
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
        return _read_record(self.path)

    def acquire(self) -> RunDirLock:
        """Take the lock or raise LaunchError naming the holder (OSError when the dir is not writable)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = self._open()
        no_flock = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raw = _read_bytes(self.path)
            holder = _parse_record(raw)
            os.close(fd)
            if not _holder_is_gone(holder):
                raise _in_use(self.run_dir, holder) from None
            # The record may be an earlier holder's while a new taker holds the flock and has
            # not written yet: give it time, and take over only a record that stayed the same.
            time.sleep(_TAKEOVER_SETTLE_S)
            if _read_bytes(self.path) != raw:
                raise self._just_taken() from None
            # A stale lock the file system kept: a fresh file (new inode) takes over.
            self.path.unlink(missing_ok=True)
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._just_taken() from None
        except OSError as e:
            if e.errno not in _NO_FLOCK:
                os.close(fd)
                raise
            no_flock = True
        if not no_flock:
            holder = self._read()
            if holder and holder.get("host") != socket.gethostname() and _other_job_active(holder):
                # A per-host flock (NFS local_lock=flock, nolock) lets every host take it: a live
                # job of another host wrote this record, and squeue says so.
                os.close(fd)
                raise _in_use(self.run_dir, holder, "; its flock is per host here, and squeue lists its job")
            self._write_record(fd, required=False)  # a full disk: the flock holds; the next write says why
            return self._verified(fd)
        # No flock on this file system: the record decides, by the rule a kept flock follows;
        # an O_EXCL claim makes reading and writing it one step, so two takers cannot both pass.
        try:
            claim = self._claim()
        except BaseException:
            os.close(fd)
            raise
        try:
            holder = self._read()
            if holder and not _record_is_stale(holder, self.run_dir):
                os.close(fd)
                raise _in_use(self.run_dir, holder, "; this file system has no flock, so its record decides")
            self._write_record(fd, required=True)
        finally:
            claim.unlink(missing_ok=True)
        return self._verified(fd)

    def _just_taken(self) -> LaunchError:
        return LaunchError(
            f"run dir {str(self.run_dir)!r} was just taken by another run "
            f"({describe_holder(self._read())}): pass run.dir=<new dir>"
        )

    def _verified(self, fd: int) -> RunDirLock:
        """Keep the lock only if `run.lock` is still the file we locked and wrote: a taker that
        judged an earlier record stale may have replaced it between our flock and our write."""
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            self._fd = None
            raise self._just_taken()
        _HELD_HERE.add(self.run_dir.resolve())
        return self

    def _record(self) -> dict:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT", "0"),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }

    def _write_record(self, fd: int, required: bool) -> None:
        """Write this run's record into the lock file and keep `fd` (closed on any error raised)."""
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(self._record()) + "\n").encode(), 0)
        except OSError as e:
            if required or e.errno != errno.ENOSPC:  # without flock the record is the lock
                os.close(fd)
                raise
        self._fd = fd

    def _claim(self) -> Path:
        """Create run.lock.claim exclusively (one taker at a time); a claim left by a taker that
        is provably gone is removed once. Raises LaunchError when another taker holds it."""
        claim = self.run_dir / (LOCK + ".claim")
        for _ in range(2):
            try:
                cfd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                other = _read_record(claim)
                if other and _record_is_stale(other, self.run_dir):
                    claim.unlink(missing_ok=True)
                    continue
                break
            try:
                try:
                    os.write(cfd, (json.dumps(self._record()) + "\n").encode())
                finally:
                    os.close(cfd)
            except BaseException:
                claim.unlink(missing_ok=True)  # an empty claim would block every later start
                raise
            return claim
        raise LaunchError(
            f"run dir {str(self.run_dir)!r} is being taken by another run ({describe_holder(_read_record(claim))}; "
            f"{claim}): pass run.dir=<new dir>, or remove {claim} if no run is starting there"
        )

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)  # an empty record: nobody holds it
            except OSError:
                pass
            os.close(self._fd)  # closing drops the flock
            self._fd = None
            _HELD_HERE.discard(self.run_dir.resolve())

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
