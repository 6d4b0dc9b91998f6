"""Run training on this machine with N processes.

    python launch/local.py RECIPE [key=value ...] [--nproc N]

Each process runs the same entry point as on SLURM (`python -m rmt_dist.train`) with
the env torchrun would give it (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
MASTER_ADDR, MASTER_PORT on a free port); the engine picks NCCL with GPUs and gloo
without (strategy.backend=auto). --nproc defaults to the number of visible GPUs, or 1.

The launcher starts the ranks itself (not through torchrun) so that it returns their exit
code: 0 done, 1 failed, 2 bad input, 75 preempted (relaunch to resume); their one-line
error is what shows, not a launcher traceback. When one rank fails, the others get
`--grace` seconds to follow before they are stopped. SIGTERM/SIGUSR2 are passed on to
every rank (they save and exit 75); the ranks watch this launcher's pid and stop when it
is gone, so no rank trains on unsupervised.

Run dir semantics are those of launch/slurm.py: the same run.dir resumes from its newest
complete checkpoint. Before any rank starts, the run dir's pre-flight checks run: a FINISHED
run, a run dir a live run holds, checkpoint.resume=false over an earlier run's checkpoints
or metrics, and checkpoints of another strategy or model are refused (one line, exit 2).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from rmt_dist.config import ConfigError, derive, load_config
from rmt_dist.errors import report
from rmt_dist.launching.dist_env import TEARDOWN_TIMEOUT_ENV, TEARDOWN_TIMEOUT_S
from rmt_dist.launching.errors import LaunchError
from rmt_dist.launching.preflight import first_failure, run_dir_checks
from rmt_dist.launching.rundir import finished_after, mark_finished

ENV_LAUNCHER_PID = "RMT_DIST_LAUNCHER_PID"  # rmt_dist.engine.preempt.watch_launcher reads it
FORWARDED = (signal.SIGTERM, signal.SIGUSR2)


def default_nproc() -> int:
    import torch

    return torch.cuda.device_count() or 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="launch/local.py", description=__doc__.split("\n\n")[0])
    p.add_argument("recipe", help="recipe YAML, e.g. recipes/smoke.yaml")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. run.dir=runs/try1"
    )
    p.add_argument("--nproc", type=int, default=None, help="processes (default: visible GPUs, or 1)")
    p.add_argument(
        "--grace",
        type=float,
        default=60.0,
        help="seconds the other ranks get to exit after one failed (default 60)",
    )
    return p.parse_intermixed_args(argv)


def _code(rc: int) -> int:
    """A rank's exit status as one of ours: killed by a signal counts as a failure."""
    return rc if rc >= 0 else 1


def _stop(procs: list[subprocess.Popen]) -> None:
    """Ranks still running after a peer failed (stuck in a collective): SIGTERM, then SIGKILL."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_ranks(cmd: list[str], nproc: int, grace_s: float) -> tuple[int, int | None]:
    """Start `nproc` ranks of `cmd`; returns (exit code, rank it came from or None)."""
    port = free_port()
    base = dict(
        os.environ,
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        **{ENV_LAUNCHER_PID: str(os.getpid()), TEARDOWN_TIMEOUT_ENV: str(TEARDOWN_TIMEOUT_S)},
    )
    procs = [subprocess.Popen(cmd, env=dict(base, RANK=str(r), LOCAL_RANK=str(r))) for r in range(nproc)]

    def forward(sig, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    first: tuple[int, int] | None = None  # (rank, code) of the first rank that failed
    deadline = None
    try:
        while any(p.poll() is None for p in procs):
            for r, p in enumerate(procs):
                rc = p.poll()
                if rc is not None and _code(rc) != 0 and first is None:
                    first, deadline = (r, _code(rc)), time.monotonic() + grace_s
            if deadline is not None and time.monotonic() > deadline:
                _stop(procs)
                break
            time.sleep(0.2)
    except KeyboardInterrupt:  # Ctrl-C reached the ranks too (one process group); let them wind down
        for p in procs:
            try:
                p.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for r, p in enumerate(procs):  # ranks that ended between two polls
        if first is None and _code(p.wait()) != 0:
            first = (r, _code(p.returncode))
    return (first[1], first[0]) if first is not None else (0, None)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.recipe, args.overrides)  # fail here, once, not in N processes
    run_dir = Path(cfg.run.dir).resolve()
    if error := first_failure(run_dir_checks(cfg)):  # before any rank starts, nothing changed
        raise error
    nproc = args.nproc if args.nproc is not None else default_nproc()
    if nproc < 1:
        raise LaunchError(f"--nproc must be >= 1, got {nproc}")
    cfg = derive(cfg, nproc)
    d = cfg.derived
    print(
        f"local run: {nproc} processes, global batch {d.global_batch}, peak lr {d.lr:.6g}, run dir {run_dir}",
        flush=True,
    )
    cmd = [sys.executable, "-m", "rmt_dist.train", args.recipe, *args.overrides]
    rc, rank = run_ranks(cmd, nproc, args.grace)
    if rc != 0 and rank is not None:
        what = {
            2: "bad input; its error is above",
            75: "preempted after saving: relaunch the same command to resume",
        }.get(rc, "failed; its error is above")
        print(f"local run: rank {rank} exited with {rc} ({what})", file=sys.stderr, flush=True)
    if finished_after(rc, cfg.run.stop_after_steps):
        mark_finished(run_dir, nproc=nproc)
    return rc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (ConfigError, LaunchError) as e:
        return report(e)


if __name__ == "__main__":
    sys.exit(main())
