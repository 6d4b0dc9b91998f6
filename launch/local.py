"""Run training on this machine with N processes (torchrun underneath).

    python launch/local.py RECIPE [key=value ...] [--nproc N]

Each process runs the same entry point as on SLURM (`python -m rmt_dist.train`) with
torchrun's env (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT on a free port);
the engine picks NCCL with GPUs and gloo without (strategy.backend=auto). --nproc
defaults to the number of visible GPUs, or 1 without any.

Run dir semantics are those of launch/slurm.py: the same run.dir resumes from its newest
complete checkpoint; a FINISHED run is refused, with the fix.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

from rmt_dist.config import ConfigError, derive, load_config
from rmt_dist.launching.errors import LaunchError
from rmt_dist.launching.rundir import check_not_finished, finished_after, mark_finished


def default_nproc() -> int:
    import torch

    return torch.cuda.device_count() or 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="launch/local.py", description=__doc__.split("\n\n")[0])
    p.add_argument("recipe", help="recipe YAML, e.g. recipes/smoke.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. run.dir=runs/try1")
    p.add_argument("--nproc", type=int, default=None, help="processes (default: visible GPUs, or 1)")
    return p.parse_intermixed_args(argv)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.recipe, args.overrides)  # fail here, once, not in N processes
    run_dir = Path(cfg.run.dir).resolve()
    check_not_finished(run_dir)
    nproc = args.nproc if args.nproc is not None else default_nproc()
    if nproc < 1:
        raise LaunchError(f"--nproc must be >= 1, got {nproc}")
    cfg = derive(cfg, nproc)
    d = cfg.derived
    print(f"local run: {nproc} processes, global batch {d.global_batch}, peak lr {d.lr:.6g}, run dir {run_dir}",
          flush=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "rmt_dist.train", args.recipe, *args.overrides]
    proc = subprocess.Popen(cmd)
    # torchrun passes SIGTERM on to its workers (the engine then saves and exits);
    # forward ours so a scheduler stopping this launcher stops the run the same way.
    previous = signal.signal(signal.SIGTERM, lambda s, _f: proc.send_signal(s))
    try:
        try:
            rc = proc.wait()
        except KeyboardInterrupt:  # Ctrl-C reached torchrun too; let it wind its workers down
            rc = proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if finished_after(rc, cfg.run.stop_after_steps):
        mark_finished(run_dir, nproc=nproc)
    return rc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (ConfigError, LaunchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
