"""Never lose a run (issue 20): one writer per run dir, no silent restart from zero,
checksummed checkpoints, data checked before the first step, every failure one line.

Single-process runs go through `python -m rmt_dist.train`'s main() in this process on the
digits betons; the process cases (orphaned ranks, the launcher's exit codes, a second
writer) use real processes. Disk-full and read-only cases use a real tmpfs (root only).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_cluster_tools import fake_squeue, hold_lock, stop
from test_engine_support import digits_dir, records, train_losses

import rmt_dist.models  # noqa: F401  (registers the RMT models with timm)
from rmt_dist.engine.checkpoint import MARKER, TRAIN_STATE, list_step_dirs
from rmt_dist.launching.errors import LaunchError
from rmt_dist.launching.rundir import mark_finished
from rmt_dist.train import main

LOCK = "run.lock"  # rmt_dist.launching.rundir.LOCK

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return digits_dir(tmp_path_factory)


def argv(
    run_dir: Path, digits: Path, *extra: str, train: Path | None = None, val: Path | None = None
) -> list[str]:
    return [
        "recipes/smoke.yaml",
        f"run.dir={run_dir}",
        f"data.train={train or digits / 'train.beton'}",
        f"data.val={val or digits / 'val.beton'}",
        "checkpoint.every_steps=2",
        "checkpoint.keep_last=3",
        "run.log_every=1",
        "data.num_workers=1",
        "run.tensorboard=false",
        *extra,
    ]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error" in line.lower() or "Traceback" in line]


@pytest.fixture(scope="module")
def base(digits, tmp_path_factory) -> Path:
    """A run to step 4 with checkpoints at 2 and 4; tests work on copies."""
    run_dir = tmp_path_factory.mktemp("base") / "run"
    assert main(argv(run_dir, digits, "run.stop_after_steps=4")) == 0
    return run_dir


def copy_run(base: Path, tmp_path: Path, name: str = "run") -> Path:
    dst = tmp_path / name
    shutil.copytree(base, dst)
    return dst


def flip_bytes(path: Path, offset: int | None = None, n: int = 16) -> None:
    """Real damage inside a real file: invert n bytes in its middle (size unchanged)."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at : at + n] = bytes(b ^ 0xFF for b in data[at : at + n])
    path.write_bytes(bytes(data))


def shard(step_dir: Path) -> Path:
    return max((step_dir / "dcp").glob("*.distcp"), key=lambda f: f.stat().st_size)


# -- case 4: corrupted checkpoints ---------------------------------------------------------
def test_corrupt_newest_checkpoint_falls_back_and_resumes_exactly(base, digits, tmp_path, capsys):
    damaged = copy_run(base, tmp_path, "damaged")
    flip_bytes(shard(damaged / "checkpoints" / "step_00000004"))
    reference = copy_run(base, tmp_path, "reference")
    shutil.rmtree(reference / "checkpoints" / "step_00000004")  # an uninterrupted run from step 2
    (reference / "checkpoints" / "latest").write_text("step_00000002\n")
    capsys.readouterr()
    assert main(argv(damaged, digits, "run.stop_after_steps=6")) == 0
    err = capsys.readouterr().err
    assert "step_00000004 skipped: dcp/__0_0.distcp fails its checksum" in err
    assert "resumed from" in err and "step_00000002" in err
    assert main(argv(reference, digits, "run.stop_after_steps=6")) == 0
    got, want = train_losses(damaged), train_losses(reference)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    assert got == want, "resume after the fallback must equal an uninterrupted run from step 2, bitwise"


def test_no_loadable_checkpoint_refuses_instead_of_restarting(base, digits, tmp_path, capsys):
    run_dir = copy_run(base, tmp_path)
    for step_dir in list_step_dirs(run_dir / "checkpoints"):
        flip_bytes(shard(step_dir))
    before = (run_dir / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(argv(run_dir, digits, "run.stop_after_steps=6")) == 2
    err = capsys.readouterr().err
    [line] = [ln for ln in err.splitlines() if "ERROR" in ln]
    assert "none can be resumed from" in line and "run.dir=<new dir>" in line
    assert "step_00000004: dcp/__0_0.distcp fails its checksum" in line
    assert "step_00000002: dcp/__0_0.distcp fails its checksum" in line
    assert [p.name for p in list_step_dirs(run_dir / "checkpoints")] == ["step_00000004", "step_00000002"]
    assert (run_dir / "metrics.jsonl").read_text() == before, "nothing of the old run is touched"


# -- case 3: a strategy or model change ----------------------------------------------------
def test_strategy_change_is_refused_with_the_fix(base, digits, tmp_path, capsys):
    run_dir = copy_run(base, tmp_path)
    before = (run_dir / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(argv(run_dir, digits, "strategy.name=fsdp", "run.stop_after_steps=6")) == 2
    [line] = [ln for ln in capsys.readouterr().err.splitlines() if "ERROR" in ln]
    assert "saved with strategy.name=ddp but this run has strategy.name=fsdp" in line
    assert "relaunch with strategy.name=ddp" in line
    assert len(list_step_dirs(run_dir / "checkpoints")) == 2
    assert (run_dir / "metrics.jsonl").read_text() == before


def test_attention_change_is_refused_though_the_weights_would_load(base, digits, tmp_path, capsys):
    """masa and gmm have the same parameter shapes: only the recorded identity stops a gmm run
    from silently continuing a masa run's weights."""
    run_dir = copy_run(base, tmp_path)
    capsys.readouterr()
    assert main(argv(run_dir, digits, "model.attention=gmm", "run.stop_after_steps=6")) == 2
    [line] = [ln for ln in capsys.readouterr().err.splitlines() if "ERROR" in ln]
    assert "model.attention=masa but this run has model.attention=gmm" in line, line
    assert "relaunch with model.attention=masa" in line
    assert len(list_step_dirs(run_dir / "checkpoints")) == 2


def test_checkpoint_of_another_model_is_one_line_not_a_dcp_traceback(
    base, digits, tmp_path, capsys, monkeypatch
):
    """Without the recorded model (older checkpoints), DCP itself fails: its
    CheckpointException is a BaseException and must still end in one line, exit 2."""
    run_dir = copy_run(base, tmp_path)
    for step_dir in list_step_dirs(run_dir / "checkpoints"):
        ts = json.loads((step_dir / TRAIN_STATE).read_text())
        ts.pop("model")
        (step_dir / TRAIN_STATE).write_text(json.dumps(ts))
        (step_dir / "config.yaml").unlink()
        manifest = json.loads((step_dir / MARKER).read_text())  # sizes only, as before checksums
        manifest["files"] = {
            k: (step_dir / k).stat().st_size for k in manifest["files"] if (step_dir / k).exists()
        }
        (step_dir / MARKER).write_text(json.dumps(manifest))
    monkeypatch.setattr("rmt_dist.engine.run.check_data", lambda cfg: None)  # the betons have 10 classes
    capsys.readouterr()
    assert main(argv(run_dir, digits, "model.num_classes=12", "run.stop_after_steps=6")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [ln for ln in err.splitlines() if "ERROR" in ln]
    assert "none can be resumed from" in line and "loading failed" in line
    assert len(list_step_dirs(run_dir / "checkpoints")) == 2


# -- keep_last and refused saves -----------------------------------------------------------
def test_saves_during_a_nan_streak_keep_the_last_good_checkpoint(base, digits, tmp_path, monkeypatch):
    run_dir = copy_run(base, tmp_path)
    monkeypatch.setenv("RMT_DIST_INJECT_NAN_AT_STEPS", "5-10")
    assert (
        main(
            argv(run_dir, digits, "checkpoint.keep_last=2", "run.max_bad_steps=20", "run.stop_after_steps=10")
        )
        == 0
    )
    kept = [p.name for p in list_step_dirs(run_dir / "checkpoints")]
    assert kept == ["step_00000010", "step_00000008", "step_00000004"], kept


def test_refused_final_save_exits_1(digits, tmp_path, capsys):
    from rmt_dist.config import derive, load_config
    from rmt_dist.engine.distributed import init_distributed, shutdown_distributed
    from rmt_dist.engine.trainer import Trainer

    recipe, *overrides = argv(tmp_path / "run", digits, "run.stop_after_steps=1")
    cfg = derive(load_config(recipe, overrides), 1)
    info = init_distributed()
    try:
        trainer = Trainer(cfg, info)
        trainer.strategy.params_finite = lambda: False  # as after a step that blew the weights up
        assert trainer.train() == 1
        trainer.close()
    finally:
        shutdown_distributed(info)
    assert not list_step_dirs(tmp_path / "run" / "checkpoints")


# -- case 5, 6 (zero-byte) and 7 (class count): data checked before the first step ----------
def _beton_copy(digits: Path, tmp_path: Path, split: str) -> Path:
    dst = tmp_path / f"{split}.beton"
    shutil.copy(digits / f"{split}.beton", dst)
    shutil.copy(digits / f"{split}.beton.meta.json", tmp_path / f"{split}.beton.meta.json")
    return dst


@pytest.mark.parametrize(
    "damage, message",
    [
        ("random_mb", "does not match its meta file"),
        ("zero_bytes", "is empty (0 bytes)"),
        ("truncated", "truncated or damaged"),
        ("val_classes", "has 12 classes but model.num_classes=10"),
    ],
)
def test_bad_data_is_refused_before_the_first_step(digits, tmp_path, capsys, damage, message):
    train, val = digits / "train.beton", digits / "val.beton"
    if damage == "val_classes":
        val = _beton_copy(digits, tmp_path, "val")
        meta = json.loads(Path(f"{val}.meta.json").read_text())
        meta["num_classes"] = 12
        Path(f"{val}.meta.json").write_text(json.dumps(meta))
    else:
        train = _beton_copy(digits, tmp_path, "train")
        size = train.stat().st_size
        with open(train, "r+b") as f:
            if damage == "random_mb":
                f.seek(size // 2)
                f.write(os.urandom(1 << 20))
            else:
                f.truncate(0 if damage == "zero_bytes" else size - 100_000)
    run_dir = tmp_path / "run"
    capsys.readouterr()
    assert main(argv(run_dir, digits, train=train, val=val)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = error_lines(err)
    assert message in line
    assert not (run_dir / "metrics.jsonl").exists(), "refused before any step"


def test_verify_command_finds_damage_the_fingerprint_misses(digits, tmp_path, capsys):
    from ffcv.reader import Reader

    from rmt_dist.data.verify import main as verify_main

    beton = _beton_copy(digits, tmp_path, "train")
    assert json.loads(Path(f"{beton}.meta.json").read_text())["checksum"].startswith("crc32:")
    assert verify_main([str(beton)]) == 0
    assert ": ok (1438 samples" in capsys.readouterr().out
    # One byte of a sample the fingerprint does not sample (row 1 of 1438; it hashes 64).
    ptr = int(Reader(str(beton)).alloc_table["ptr"][1])
    flip_bytes(beton, ptr + 100, n=1)
    assert verify_main([str(beton)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "full checksum" in err and "re-convert" in err


# -- case 7: FINISHED and the override blame --------------------------------------------------
def test_train_entry_point_respects_finished(base, digits, tmp_path, capsys):
    run_dir = copy_run(base, tmp_path)
    mark_finished(run_dir)
    config = (run_dir / "config.yaml").read_text()
    capsys.readouterr()
    assert main(argv(run_dir, digits)) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert "holds a finished run" in line
    assert (run_dir / "config.yaml").read_text() == config


def test_bad_override_is_blamed_on_the_command_line(capsys):
    assert main(["recipes/smoke.yaml", "data.num_workers=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: command line: data.num_workers must be >= 0, got -1"


# -- case 1: one writer per run dir ----------------------------------------------------------
def test_second_run_is_refused_naming_the_holder(digits, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys, time\n"
            "from rmt_dist.launching.rundir import RunDirLock\n"
            # the holder's record names another node: a lock an NFS server kept for a dead node
            "socket.gethostname = lambda: 'node-a'\n"
            f"RunDirLock({str(run_dir)!r}).acquire(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, SLURM_JOB_ID="4242"),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        assert main(argv(run_dir, digits)) == 2
        [line] = error_lines(capsys.readouterr().err)
        assert f"is in use by another run (pid {holder.pid} on host node-a, SLURM job 4242" in line
        assert not (run_dir / "config.yaml").exists()
        # Another process of the same allocation (salloc, srun --pty: same job id, same
        # restart count) is a second writer, not a requeue: refused.
        monkeypatch.setenv("SLURM_JOB_ID", "4242")
        monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
        with pytest.raises(LaunchError, match="is in use by another run"):
            RunDirLock(run_dir).acquire()
        # A later attempt of that job (the requeue after node-a died) takes the kept lock over.
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        lock = RunDirLock(run_dir).acquire()
        assert json.loads((run_dir / LOCK).read_text())["pid"] == os.getpid()
        lock.release()
    finally:
        holder.kill()
        holder.wait()
    # A holder killed with -9: its lock goes with it, and its record does not block.
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    with RunDirLock(run_dir):
        assert json.loads((run_dir / LOCK).read_text())["pid"] == os.getpid()


def test_a_kept_lock_of_another_hosts_job_is_refused_whatever_squeue_says(tmp_path, monkeypatch):
    """The NFS case: the flock is held, the record names another node's job. squeue not
    listing it proves nothing (hidden partitions, PrivateData=jobs, another cluster), so only
    a later attempt of that job takes it over; the refusal says how to clear a dead one."""
    run_dir, bin_dir = tmp_path / "run", tmp_path / "bin"
    monkeypatch.setenv("SLURM_JOB_ID", "5000")  # another job than the holder's
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    holder = hold_lock(run_dir, host="node-a", job="4242")
    fix = f"if pid {holder.pid} on host node-a (SLURM job 4242) is no longer running, delete {run_dir / LOCK}"
    try:
        monkeypatch.setenv("PATH", fake_squeue(bin_dir, ["4242|4242|RUNNING|x"]))
        for rows, rc in ((["4242|4242|RUNNING|x"], 0), ([], 1), (["4242|4242|CANCELLED|x"], 0), ([], 0)):
            fake_squeue(bin_dir, rows, rc=rc)
            with pytest.raises(LaunchError, match="is in use by another run .*SLURM job 4242") as e:
                RunDirLock(run_dir).acquire()
            assert fix in str(e.value) and str(e.value).endswith("and launch again")
        # The requeue of that job (a later attempt) takes the kept lock over.
        monkeypatch.setenv("SLURM_JOB_ID", "4242")
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        with RunDirLock(run_dir):
            assert json.loads((run_dir / LOCK).read_text())["slurm_restart_count"] == "1"
    finally:
        stop(holder)


def test_a_takeover_racing_a_new_holder_leaves_one_writer(tmp_path, monkeypatch):
    """A takes the flock over a dead holder's record but has not written its own yet; B reads
    the old record, judges it stale and replaces the file. Only one of them may run."""
    import socket

    from rmt_dist.launching import rundir

    monkeypatch.setattr(rundir, "_TAKEOVER_SETTLE_S", 0, raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    a, taken = rundir.RunDirLock(run_dir), []
    write = a._write_record

    def pause_then_write(fd, required):
        taken.append(rundir.RunDirLock(run_dir).acquire())  # B runs its whole acquire meanwhile
        write(fd, required)

    monkeypatch.setattr(a, "_write_record", pause_then_write)
    try:
        a.acquire()
        taken.append(a)
    except LaunchError as e:
        assert "was just taken by another run" in str(e)
    assert len(taken) == 1, "two runs hold one run dir"
    assert os.fstat(taken[0]._fd).st_ino == os.stat(run_dir / LOCK).st_ino
    for lock in taken:
        lock.release()


def test_a_takeover_backs_off_when_the_new_holder_writes_its_record_meanwhile(tmp_path, monkeypatch):
    """B judged the old record stale; the flock's new holder writes its record before B would
    replace the file: B refuses and leaves the file alone."""
    import fcntl
    import socket

    from rmt_dist.launching import rundir

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = run_dir / LOCK
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    fd = os.open(path, os.O_RDWR)  # the new holder: flock taken, record not written yet
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    inode = os.fstat(fd).st_ino
    new = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": "now"})
    monkeypatch.setattr(rundir.time, "sleep", lambda s: os.pwrite(fd, new.encode(), 0))
    try:
        with pytest.raises(LaunchError, match="was just taken by another run"):
            rundir.RunDirLock(run_dir).acquire()
        assert os.stat(path).st_ino == inode, "the live holder's lock file was replaced"
    finally:
        os.close(fd)


def test_a_per_host_flock_does_not_overwrite_a_live_jobs_record(tmp_path, monkeypatch):
    """NFS with local_lock=flock: the flock succeeds on every host, the record names a job of
    another host that squeue lists: refused. A record of a job that squeue does not list (a
    crash) or of this very job does not block the restart."""
    run_dir, bin_dir = tmp_path / "run", tmp_path / "bin"
    run_dir.mkdir()
    record = {"host": "node-a", "pid": 1, "slurm_job_id": "4242", "slurm_restart_count": "0", "since": "x"}
    (run_dir / LOCK).write_text(json.dumps(record))
    monkeypatch.setenv("PATH", fake_squeue(bin_dir, ["4242|4242|RUNNING|x"]))
    monkeypatch.setenv("SLURM_JOB_ID", "5000")
    with pytest.raises(LaunchError, match="in use by another run .*SLURM job 4242.*per host"):
        RunDirLock(run_dir).acquire()
    assert json.loads((run_dir / LOCK).read_text()) == record, "the live job's record was overwritten"
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # this job's own record (a restart on another node)
    RunDirLock(run_dir).acquire().release()
    (run_dir / LOCK).write_text(json.dumps(record))
    monkeypatch.setenv("SLURM_JOB_ID", "5000")
    fake_squeue(bin_dir, ["4242|4242|FAILED|x"])  # its job is over: a crash restart proceeds
    RunDirLock(run_dir).acquire().release()


def test_without_flock_the_record_keeps_a_second_run_out(tmp_path, monkeypatch):
    """A file system without flock (ENOLCK): the lock's record decides, by the same rule."""
    import errno
    import fcntl
    import socket

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    run_dir = tmp_path / "run"
    first = RunDirLock(run_dir).acquire()
    with pytest.raises(LaunchError, match=rf"in use by another run \(pid {os.getpid()} .*no flock"):
        RunDirLock(run_dir).acquire()
    first.release()
    RunDirLock(run_dir).acquire().release()  # released: an empty record, free

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    live = {"host": socket.gethostname(), "pid": sleeper.pid, "since": "earlier"}
    try:
        (run_dir / LOCK).write_text(json.dumps(live))  # a run in another process
        with pytest.raises(LaunchError, match=f"is in use by another run \\(pid {sleeper.pid} "):
            RunDirLock(run_dir).acquire()
        (run_dir / LOCK).write_text("")
        (run_dir / f"{LOCK}.claim").write_text(json.dumps(live))  # a taker between its check and its write
        with pytest.raises(LaunchError, match="is being taken by another run"):
            RunDirLock(run_dir).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    # A later attempt of the record's job takes over before the live-pid rule applies.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / LOCK).write_text(json.dumps({**live, "pid": sleeper.pid, "slurm_job_id": "77"}))
        monkeypatch.setenv("SLURM_JOB_ID", "77")
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        RunDirLock(run_dir).acquire().release()
    finally:
        sleeper.kill()
        sleeper.wait()
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    # A record naming this very pid that this process does not hold: a dead run's (pid reuse).
    (run_dir / LOCK).write_text(json.dumps({**live, "pid": os.getpid()}))
    RunDirLock(run_dir).acquire().release()
    # Writing the claim fails (a full disk): the empty claim must not block every later start.
    real_write = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space"):
        RunDirLock(run_dir).acquire()
    monkeypatch.setattr(os, "write", real_write)
    assert not (run_dir / f"{LOCK}.claim").exists()
    # Both gone now (a dead pid on this host): neither record blocks.
    (run_dir / LOCK).write_text(json.dumps(live))
    with RunDirLock(run_dir):
        assert json.loads((run_dir / LOCK).read_text())["pid"] == os.getpid()
        assert not (run_dir / f"{LOCK}.claim").exists()


def _contents(run_dir: Path) -> dict[str, bytes]:
    return {str(f.relative_to(run_dir)): f.read_bytes() for f in sorted(run_dir.rglob("*")) if f.is_file()}


def test_resume_false_over_an_earlier_run_is_refused_before_anything_changes(base, digits, tmp_path, capsys):
    run_dir = copy_run(base, tmp_path)
    before = _contents(run_dir)
    capsys.readouterr()
    assert main(argv(run_dir, digits, "checkpoint.resume=false", "run.stop_after_steps=2")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = error_lines(err)
    assert (
        f"error: run dir {str(run_dir)!r} already holds a run (2 checkpoint(s), the newest at step 4: "
        in line
    )
    assert "record(s) in metrics.jsonl up to step 4" in line
    assert "pass run.dir=<new dir>, or remove" in line and "or set checkpoint.resume=true" in line
    assert _contents(run_dir) == before, "nothing in the run dir may change"
    # Metrics alone (the checkpoints moved away) are an earlier run too.
    shutil.rmtree(run_dir / "checkpoints")
    assert main(argv(run_dir, digits, "checkpoint.resume=false", "run.stop_after_steps=2")) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert "already holds a run (" in line and "record(s) in metrics.jsonl up to step 4)" in line
    # An empty run dir still starts from step 0.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert main(argv(fresh, digits, "checkpoint.resume=false", "run.stop_after_steps=1")) == 0
    assert [r["step"] for r in records(fresh) if "loss" in r] == [1]


# -- case 2 (and 1 with real runs): ranks die with their launcher -----------------------------
def RunDirLock(run_dir):  # noqa: N802  (imported late: the tests must run, and fail, on code without it)
    from rmt_dist.launching.rundir import RunDirLock as lock

    return lock(run_dir)


def _rank_pids(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"rmt_dist.train" in cmd and any(marker.encode() in c for c in cmd):
                pids.append(int(d.name))
    return pids


def test_ranks_stop_when_their_launcher_is_killed(digits, tmp_path, capsys):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "launch/local.py", *argv(run_dir, digits, "optim.epochs=50"), "--nproc", "2"]
    launcher = subprocess.Popen(
        cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "metrics.jsonl").is_file() or not records(run_dir):
            assert launcher.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.5)
        ranks = _rank_pids(str(run_dir))
        assert len(ranks) == 2
        # A second run into the same dir while this one trains: refused, naming rank 0.
        capsys.readouterr()
        assert main(argv(run_dir, digits)) == 2
        [line] = error_lines(capsys.readouterr().err)
        holder = json.loads((run_dir / LOCK).read_text())
        assert f"in use by another run (pid {holder['pid']}" in line and holder["pid"] in ranks
        # Only the launcher (its process group would take the ranks along): they are orphans now.
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 60
        while _rank_pids(str(run_dir)):
            assert time.monotonic() < deadline, "the ranks trained on after their launcher was killed"
            time.sleep(0.5)
    finally:
        for pid in _rank_pids(str(run_dir)):
            os.kill(pid, signal.SIGKILL)
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert (run_dir / "checkpoints" / latest / MARKER).is_file(), "they saved before stopping"
    with RunDirLock(run_dir):  # and released the run dir
        pass


# -- case 7: the launcher's exit code is the ranks' ------------------------------------------
def _launcher():
    import importlib.util

    spec = importlib.util.spec_from_file_location("launch_local", ROOT / "launch" / "local.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("codes", [(0, 0), (75, 75), (2, 2), (1, None)])
def test_launcher_returns_the_ranks_exit_code(codes):
    """Real rank processes; None: a rank that hangs (waits for a dead peer) and is stopped."""
    script = (
        "import os, sys, time\nr = int(os.environ['RANK'])\ncodes = " + repr(codes) + "\n"
        "assert os.environ['WORLD_SIZE'] == '2' and os.environ['RMT_DIST_LAUNCHER_PID']\n"
        "if codes[r] is None: time.sleep(60)\n"
        "if codes[r]: print(f'error: rank {r} says why', file=sys.stderr)\n"
        "sys.exit(codes[r])\n"
    )
    t0 = time.monotonic()
    rc, rank = _launcher().run_ranks([sys.executable, "-c", script], 2, grace_s=1.0)
    assert rc == (codes[0] or 0)
    assert rank == (None if rc == 0 else 0 if codes[1] is None else rank)
    assert time.monotonic() - t0 < 30


# -- case 6: disk full and a read-only run dir (a real tmpfs) -----------------------------------
@contextmanager
def tmpfs(path: Path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (the disk-full cases need a real full file system)")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def leftovers(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if ".tmp" in p.name]


def test_disk_full_during_a_save_is_one_line_and_leaves_nothing_behind(digits, tmp_path, capsys):
    with tmpfs(tmp_path / "small", "size=7m") as mnt:  # room for one checkpoint (~5 MB), not two
        run_dir = mnt / "run"
        capsys.readouterr()
        assert main(argv(run_dir, digits, "run.stop_after_steps=4")) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        [line] = error_lines(err)
        assert "saving checkpoint step 4" in line and "no space left" in line and "relaunch to resume" in line
        assert [p.name for p in list_step_dirs(run_dir / "checkpoints")] == ["step_00000002"]
        assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000002"
        assert not leftovers(run_dir)
        # Relaunching on the full disk: the config write fails in one line, no temp file stays.
        with open(mnt / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 16))
                    f.flush()
            except OSError:
                pass
        capsys.readouterr()
        assert main(argv(run_dir, digits, "optim.lr=1e-3", "run.stop_after_steps=4")) == 1
        [line] = error_lines(capsys.readouterr().err)
        assert "no space left" in line and "free space there" in line
        assert not leftovers(run_dir)


def test_read_only_run_dir_is_one_line(digits, tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mnt:
        capsys.readouterr()
        assert main(argv(mnt / "run", digits)) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        [line] = error_lines(err)
        assert "cannot be used" in line and "Read-only file system" in line and "writable" in line


def test_a_bare_rank_is_not_stopped_when_its_shell_goes(monkeypatch):
    """`nohup python -m rmt_dist.train ... &` is re-parented when its shell exits: no launcher
    was there to die, so nothing watches the parent (review: such runs stopped themselves)."""
    import threading

    from rmt_dist.engine import preempt

    monkeypatch.delenv(preempt.ENV_LAUNCHER_PID, raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    before = threading.active_count()
    unwatch = preempt.watch_launcher(poll_s=0.01)
    try:
        assert threading.active_count() == before
    finally:
        unwatch()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")  # a torchrun rank is watched
    unwatch = preempt.watch_launcher(poll_s=0.01)
    try:
        assert threading.active_count() == before + 1
    finally:
        unwatch()
