"""Submit a training run to SLURM with submitit.

    python launch/slurm.py RECIPE [key=value ...] [--dry-run]

The recipe's `slurm:` section sets the job: nodes, gpus_per_node (one task per GPU;
0 = a CPU job with one task per node), cpus_per_task, mem, time (minutes), partition,
account, qos, constraint, additional_parameters (any other sbatch option),
max_requeues and job_name. Every task runs the same entry point as every other
launcher (rmt_dist.train), with torch.distributed set up from SLURM's environment.

Run dir semantics: launching again with the same run.dir resumes it from its newest
complete checkpoint (that is also what a requeue does). A run dir holding a FINISHED
run, or one a queued/running job is using, is refused with the fix. Logs go to
RUN_DIR/slurm/<job id>_<task>_log.{out,err}.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import subprocess
import sys
from pathlib import Path

from rmt_dist.config import ConfigError, derive, load_config, to_yaml
from rmt_dist.launch_env import tasks_per_node, world_size
from rmt_dist.launching.errors import LaunchError
from rmt_dist.launching.rundir import check_not_finished
from rmt_dist.launching.sbatch import executor_parameters, run_dir_comment, submitit_folder
from rmt_dist.launching.task import DEFAULT_ENTRY, TrainTask


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="launch/slurm.py", description=__doc__.split("\n\n")[0])
    p.add_argument("recipe", help="recipe YAML, e.g. recipes/rmt_s.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. slurm.nodes=4")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and sbatch options; submit nothing")
    p.add_argument("--entry", default=DEFAULT_ENTRY, help=argparse.SUPPRESS)  # tests of the plumbing only
    return p.parse_intermixed_args(argv)


def active_jobs_for(run_dir: Path) -> list[str]:
    """Ids of queued/running jobs whose comment names this run dir (see sbatch.run_dir_comment)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%k"], capture_output=True, text=True)
    comment = run_dir_comment(run_dir)
    return [line.split("|", 1)[0] for line in out.stdout.splitlines() if line.split("|", 1)[-1] == comment]


def sbatch_header(params: dict, run_dir: Path) -> str:
    """The #SBATCH lines submitit will write (its own formatter, so this is what sbatch sees)."""
    from submitit.slurm.slurm import _make_sbatch_string

    script = _make_sbatch_string(command="...", folder=submitit_folder(run_dir), **params)
    return "\n".join(line for line in script.splitlines() if line.startswith("#SBATCH"))


def summary(cfg, params: dict) -> str:
    s, d = cfg.slurm, cfg.derived
    gpus = f"{s.gpus_per_node} GPUs per node" if s.gpus_per_node else "no GPUs (CPU job)"
    return "\n".join([
        f"tasks: {d.world_size} = {s.nodes} nodes x {tasks_per_node(s)} tasks per node ({gpus})",
        f"global batch: {d.global_batch} = {cfg.data.batch_size} per device x {d.world_size} ranks "
        f"x {cfg.optim.accum_steps} accumulation steps",
        f"peak lr: {d.lr:.6g}   ema decay per step: {d.ema_decay:.8g}",
        f"run dir: {cfg.run.dir}",
    ])


def submit(args: argparse.Namespace) -> int:
    recipe = Path(args.recipe)
    cfg = load_config(recipe, args.overrides)
    cfg = derive(cfg, world_size(cfg.slurm))
    run_dir = Path(cfg.run.dir).resolve()
    params = executor_parameters(cfg.slurm, run_dir)
    if args.dry_run:
        print(to_yaml(cfg))
        print("# sbatch parameters (as submitit writes them into the job script)")
        print(sbatch_header(params, run_dir))
        print(summary(cfg, params))
        return 0

    check_not_finished(run_dir)
    if shutil.which("sbatch") is None:
        raise LaunchError("sbatch not found: run this on a SLURM login node (or use launch/local.py on one machine)")
    busy = active_jobs_for(run_dir)
    if busy:
        raise LaunchError(f"job {', '.join(busy)} is already queued or running in run dir {str(run_dir)!r}; "
                          f"wait for it, scancel it, or pass run.dir=<new dir>")

    import submitit  # after the cheap checks: importing it is slow-ish

    executor = submitit.SlurmExecutor(folder=submitit_folder(run_dir), max_num_timeout=cfg.slurm.max_requeues)
    executor.update_parameters(**params)
    overrides = [*args.overrides, f"run.dir={run_dir}"]  # every restart, whatever its cwd, uses this dir
    task = TrainTask(str(recipe.resolve()), overrides, str(run_dir), cfg.slurm.max_requeues,
                     stop_after_steps=cfg.run.stop_after_steps, entry=args.entry)
    sbatch_stderr = io.StringIO()  # submitit echoes sbatch's stderr; we report it once, below
    try:
        with contextlib.redirect_stderr(sbatch_stderr):
            job = executor.submit(task)
    except submitit.core.utils.FailedJobError as e:
        msg = "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or sbatch_stderr.getvalue()
        raise LaunchError(f"sbatch rejected the job: {msg}") from None
    print(f"submitted job {job.job_id} ({cfg.derived.world_size} tasks on {cfg.slurm.nodes} nodes)")
    print(f"run dir: {run_dir}")
    print(f"logs: {job.paths.stdout} (task 0; {job.paths.stderr} for stderr; other tasks: _<task>_log.*)")
    print(f"follow: tail -f {job.paths.stdout}   cancel: scancel {job.job_id}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return submit(args)
    except (ConfigError, LaunchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
