"""Submit a training run to SLURM with submitit.

    python launch/slurm.py RECIPE [RECIPE ...] [key=value ...] [--sweep key=v1,v2 ...] [--dry-run]

The recipe's `slurm:` section sets the job: nodes, gpus_per_node (one task per GPU;
0 = a CPU job with one task per node), cpus_per_task, mem, time (minutes), partition,
account, qos, constraint, additional_parameters (any other sbatch option),
max_requeues and job_name. Every task runs the same entry point as every other
launcher (rmt_dist.train), with torch.distributed set up from SLURM's environment.

Run dir semantics: launching again with the same run.dir resumes it from its newest
complete checkpoint (that is also what a requeue does). A run dir holding a FINISHED
run, or one a queued/running job is using, is refused with the fix. Logs go to
RUN_DIR/slurm/<job id>_<task>_log.{out,err}; RUN_DIR/launch.json records the job id
(`python -m rmt_dist.status RUN_DIR` reads it).

Pre-flight: before sbatch, the inputs are checked (rmt_dist/launching/preflight.py):
betons exist and match their meta, val's classes are train's, model.num_classes, the
token-label store, init_checkpoint, the run dir (not FINISHED, writable, not held by a live
run, checkpoint.resume=false never over an earlier run, checkpoints of this strategy and
model), the batch, the derived values. A failure is refused with its one line and exit 2;
--dry-run prints what would be submitted and every check ("ok" / "would fail"), then exits
0 when every check passes, else 2 with the first failure's line (the one a submission
would stop with).

Sweeps: `--sweep model.attention=masa,gmm` (repeatable: the cartesian product), and/or
several recipes, submit one job per point in one job array per set of sbatch options
(submitit's batch submission). Each point gets its own run dir,
<recipe's run.dir>/<key>-<value>; the array's logs are in <common parent>/sweep_slurm/.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
from pathlib import Path

from rmt_dist.config import ConfigError, derive, load_config, to_yaml
from rmt_dist.config.job_size import tasks_per_node, world_size
from rmt_dist.errors import report
from rmt_dist.launching.errors import LaunchError
from rmt_dist.launching.preflight import Check, first_failure, require, run_checks
from rmt_dist.launching.record import record_launch
from rmt_dist.launching.sbatch import (
    bad_input_teardown,
    executor_parameters,
    submitit_folder,
)
from rmt_dist.launching.squeue import active_jobs_for
from rmt_dist.launching.sweep import point_run_dirs, points
from rmt_dist.launching.task import DEFAULT_ENTRY, TrainTask


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="launch/slurm.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument(
        "args",
        nargs="+",
        metavar="RECIPE | key=value",
        help="one or more recipe YAMLs (e.g. recipes/rmt_s.yaml), then overrides (e.g. slurm.nodes=4)",
    )
    p.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="key=v1,v2",
        help="submit one job per value (repeat for a grid), e.g. --sweep model.attention=masa,gmm",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config, sbatch options and pre-flight checks; submit nothing",
    )
    p.add_argument("--entry", default=DEFAULT_ENTRY, help=argparse.SUPPRESS)  # tests of the plumbing only
    a = p.parse_intermixed_args(argv)
    a.overrides = [x for x in a.args if "=" in x]
    a.recipes = [x for x in a.args if "=" not in x]
    if not a.recipes:
        p.error("no recipe given (e.g. recipes/smoke.yaml)")
    return a


def sbatch_header(params: dict, run_dir: Path) -> str:
    """The #SBATCH lines submitit will write (its own formatter, so this is what sbatch sees)."""
    from submitit.slurm.slurm import _make_sbatch_string

    script = _make_sbatch_string(command="...", folder=submitit_folder(run_dir), **params)
    return "\n".join(line for line in script.splitlines() if line.startswith("#SBATCH"))


def summary(cfg, params: dict) -> str:
    s, d = cfg.slurm, cfg.derived
    gpus = f"{s.gpus_per_node} GPUs per node" if s.gpus_per_node else "no GPUs (CPU job)"
    return "\n".join(
        [
            f"tasks: {d.world_size} = {s.nodes} nodes x {tasks_per_node(s)} tasks per node ({gpus})",
            f"global batch: {d.global_batch} = {cfg.data.batch_size} per device x {d.world_size} ranks "
            f"x {cfg.optim.accum_steps} accumulation steps",
            f"peak lr: {d.lr:.6g}   ema decay per step: {d.ema_decay:.8g}",
            f"run dir: {cfg.run.dir}",
        ]
    )


def _slurm_checks(run_dir: Path) -> list[Check]:
    """What a submission checks besides the pre-flight: sbatch is here, and no job of this run
    dir is queued or running (a dry run reports them too, so it exits as the submission would)."""
    checks = []
    for name, check in (("slurm.sbatch", _check_sbatch), ("slurm.queue", lambda: _check_not_queued(run_dir))):
        try:
            check()
        except LaunchError as e:
            checks.append(Check(name, False, str(e)))
    if not checks:
        squeue = (
            "no job of this run dir is queued or running" if shutil.which("squeue") else "squeue not found"
        )
        checks.append(Check("slurm", True, f"sbatch found; {squeue}"))
    return checks


def print_preflight(cfg) -> tuple[LaunchError | None, int]:
    """Print every check; (the error a submission would stop with or None, how many failed)."""
    checks = [*_slurm_checks(Path(cfg.run.dir).resolve()), *run_checks(cfg)]
    print("\n".join(c.line() for c in checks))
    return first_failure(checks), sum(not c.ok for c in checks)


def _check_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise LaunchError(
            "sbatch not found: run this on a SLURM login node (or use launch/local.py on one machine)"
        )


def _check_not_queued(run_dir: Path) -> None:
    """Before the pre-flight: a job of this run dir is named by its id (its lock record, which
    pre-flight's run.lock check reads, names only its pid and host)."""
    busy = active_jobs_for(run_dir)
    if busy:
        raise LaunchError(
            f"job {', '.join(busy)} is already queued or running in run dir {str(run_dir)!r}; "
            f"wait for it, scancel it, or pass run.dir=<new dir>"
        )


def _submit_jobs(executor, tasks: list, batch: bool) -> list:
    import submitit

    sbatch_stderr = io.StringIO()  # submitit echoes sbatch's stderr; we report it once, below
    try:
        with contextlib.redirect_stderr(sbatch_stderr):
            if not batch:
                return [executor.submit(tasks[0])]
            with executor.batch():
                jobs = [executor.submit(t) for t in tasks]
            return jobs
    except submitit.core.utils.FailedJobError as e:
        msg = (
            "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
            or sbatch_stderr.getvalue()
        )
        raise LaunchError(f"sbatch rejected the job: {msg}") from None


def _task(recipe: str, overrides: list[str], cfg, run_dir: Path, entry: str, log_folder: Path | None = None):
    overrides = [*overrides, f"run.dir={run_dir}"]  # every restart, whatever its cwd, uses this dir
    return TrainTask(
        str(Path(recipe).resolve()),
        overrides,
        str(run_dir),
        cfg.slurm.max_requeues,
        stop_after_steps=cfg.run.stop_after_steps,
        entry=entry,
        log_folder=str(log_folder) if log_folder else None,
    )


def submit(args: argparse.Namespace) -> int:
    if len(args.recipes) > 1 or args.sweep:
        return submit_sweep(args)
    recipe = Path(args.recipes[0])
    cfg = load_config(recipe, args.overrides)
    cfg = derive(cfg, world_size(cfg.slurm))
    run_dir = Path(cfg.run.dir).resolve()
    params = executor_parameters(cfg.slurm, run_dir)
    if args.dry_run:
        print(to_yaml(cfg))
        print("# sbatch parameters (as submitit writes them into the job script)")
        print(sbatch_header(params, run_dir))
        print(summary(cfg, params))
        print("# pre-flight")
        error, failed = print_preflight(cfg)
        # Every check is listed; the exit status is the submission's (2: it would be refused).
        print(
            f"pre-flight: {failed} check(s) would fail; a submission would be refused"
            if failed
            else "pre-flight: every check ok",
            flush=True,
        )
        if error:
            raise error
        return 0

    _check_not_queued(run_dir)
    checks = require(cfg)  # a bad input stops here, before the queue
    _check_sbatch()
    import submitit  # after the cheap checks: importing it is slow-ish

    executor = submitit.SlurmExecutor(folder=submitit_folder(run_dir), max_num_timeout=cfg.slurm.max_requeues)
    executor.update_parameters(**params)
    job = _submit_jobs(executor, [_task(str(recipe), args.overrides, cfg, run_dir, args.entry)], batch=False)[
        0
    ]
    record_launch(
        run_dir,
        job.job_id,
        recipe=str(recipe),
        overrides=args.overrides,
        stdout=str(job.paths.stdout),
        stderr=str(job.paths.stderr),
    )
    print(f"pre-flight: {len(checks)} checks ok")
    print(f"submitted job {job.job_id} ({cfg.derived.world_size} tasks on {cfg.slurm.nodes} nodes)")
    print(f"run dir: {run_dir}")
    print(f"logs: {job.paths.stdout} (task 0; {job.paths.stderr} for stderr; other tasks: _<task>_log.*)")
    print(f"follow: tail -f {job.paths.stdout}   cancel: scancel {job.job_id}")
    print(f"status: python -m rmt_dist.status {run_dir}")
    return 0


def submit_sweep(args: argparse.Namespace) -> int:
    """One job per point; points with the same sbatch options go in one job array."""
    pts = points(args.recipes, args.sweep)
    bases = [Path(load_config(p.recipe, [*args.overrides, *p.overrides]).run.dir).resolve() for p in pts]
    dirs = point_run_dirs(pts, bases)
    cfgs = []
    for p, d in zip(pts, dirs):
        cfg = load_config(p.recipe, [*args.overrides, *p.overrides, f"run.dir={d}"])
        cfgs.append(derive(cfg, world_size(cfg.slurm)))
    if args.dry_run:
        first: LaunchError | None = None
        failed = 0
        for p, cfg in zip(pts, cfgs):
            print(f"# point {p.name}: run dir {cfg.run.dir}")
            print(summary(cfg, {}))
            error, n = print_preflight(cfg)
            failed += n
            if error and first is None:
                first = LaunchError(f"sweep point {p.name!r}: {error}")
        print(
            f"pre-flight: {failed} check(s) would fail; nothing would be submitted"
            if first
            else f"pre-flight: every check ok for all {len(pts)} points",
            flush=True,
        )
        if first:
            raise first
        return 0
    for p, cfg in zip(pts, cfgs):  # every point is checked before any is submitted
        _check_not_queued(Path(cfg.run.dir))
        try:
            require(cfg)
        except LaunchError as e:
            raise LaunchError(f"sweep point {p.name!r}: {e}") from None
    _check_sbatch()
    import json

    import submitit

    common = Path(os_commonpath([str(d) for d in dirs]))
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        params = {k: v for k, v in executor_parameters(cfg.slurm, common).items()}
        key = json.dumps([params, cfg.slurm.max_requeues], sort_keys=True, default=str)
        groups.setdefault(key, []).append(i)
    rows = []
    for key, idx in groups.items():
        params, max_requeues = json.loads(key)
        folder = common / "sweep_slurm"
        params["comment"] = f"rmt-dist-sweep:{common}"
        params["teardown"] = bad_input_teardown(folder)
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=max_requeues)
        executor.update_parameters(**params)
        tasks = [
            _task(pts[i].recipe, [*args.overrides, *pts[i].overrides], cfgs[i], dirs[i], args.entry, folder)
            for i in idx
        ]
        jobs = _submit_jobs(executor, tasks, batch=True)
        for i, job in zip(idx, jobs):
            record_launch(
                dirs[i],
                job.job_id,
                recipe=pts[i].recipe,
                overrides=[*args.overrides, *pts[i].overrides],
                stdout=str(job.paths.stdout),
                stderr=str(job.paths.stderr),
            )
            rows.append((pts[i].name, job.job_id, str(dirs[i])))
    w0, w1 = max(len("point"), *(len(r[0]) for r in rows)), max(len("job id"), *(len(r[1]) for r in rows))
    print(f"submitted {len(rows)} jobs (pre-flight ok for every point)")
    print(f"{'point':<{w0}}  {'job id':<{w1}}  run dir")
    for r in rows:
        print(f"{r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]}")
    print(
        f"logs: {common / 'sweep_slurm'}   status: python -m rmt_dist.status {' '.join(r[2] for r in rows)}"
    )
    return 0


def os_commonpath(paths: list[str]) -> str:
    import os

    common = os.path.commonpath(paths)
    return os.path.dirname(common) if common in paths else common


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return submit(args)
    except (ConfigError, LaunchError) as e:
        return report(e)


if __name__ == "__main__":
    sys.exit(main())
