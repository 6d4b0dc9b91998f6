"""The `slurm:` recipe section -> submitit SlurmExecutor parameters (sbatch options)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from ..config.job_size import tasks_per_node
from ..config.schema import SlurmConfig

# Seconds between SLURM's warning signal (USR2, which submitit and the engine both treat
# as "save now and requeue") and the time limit: enough for one checkpoint of RMT-L.
SIGNAL_DELAY_S = 120


def bad_input_marker(folder: str | Path, job_id: str) -> Path:
    """Written by a rank that exited 2 (bad input): holds its one-line error (task.py)."""
    return Path(folder) / f"bad_input_{job_id}"


def bad_input_teardown(folder: str | Path) -> list[str]:
    """Batch-script lines run after srun: when a rank refused a bad input, its line becomes the
    last line of the job's main log (task 0's stderr) and the job fails with exit code 2."""
    marker = shlex.quote(str(folder)) + "/bad_input_${SLURM_JOB_ID}"
    return [f"if [ -f {marker} ]; then cat {marker} >&2; exit 2; fi"]


def submitit_folder(run_dir: str | Path) -> Path:
    """Job scripts, pickles and per-task logs live inside the run dir (one place per run)."""
    return Path(run_dir) / "slurm"


def executor_parameters(slurm: SlurmConfig, run_dir: str | Path) -> dict[str, Any]:
    """Keyword arguments for `SlurmExecutor.update_parameters`.

    One task per GPU (`ntasks_per_node`), CPU jobs when gpus_per_node=0. A cluster that
    wants `--gres=gpu:N` instead of `--gpus-per-node` sets additional_parameters.gres,
    which then replaces it. The run dir goes in the job comment so a second launch
    into the same dir can find a job that is still queued or running.
    """
    extra = dict(slurm.additional_parameters)
    params: dict[str, Any] = {
        "job_name": slurm.job_name,
        "nodes": slurm.nodes,
        "ntasks_per_node": tasks_per_node(slurm),
        "cpus_per_task": slurm.cpus_per_task,
        "time": slurm.time,
        "signal_delay_s": SIGNAL_DELAY_S,
        "comment": run_dir_comment(run_dir),
        "stderr_to_stdout": False,
        # One rank exiting non-zero (a bad input, a crash) ends the job's other ranks at
        # once instead of leaving them waiting in a collective until the time limit.
        "srun_args": ["--kill-on-bad-exit=1"],
        "teardown": bad_input_teardown(submitit_folder(run_dir)),
    }
    if slurm.gpus_per_node > 0 and "gres" not in extra:
        params["gpus_per_node"] = slurm.gpus_per_node
    for key in ("mem", "partition", "account", "qos", "constraint"):
        value = getattr(slurm, key)
        if value is not None:
            params[key] = value
    # Let SLURM requeue the job itself on node failure or preemption (PreemptMode=REQUEUE).
    extra.setdefault("requeue", True)
    params["additional_parameters"] = extra
    return params


def run_dir_comment(run_dir: str | Path) -> str:
    return f"rmt-dist:{Path(run_dir).resolve()}"
