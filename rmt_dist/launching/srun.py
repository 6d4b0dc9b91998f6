"""`srun python -m rmt_dist.launching.srun RECIPE [key=value ...]`: one rank, started by srun.

The entry point for jobs that do not go through submitit, typically a container:

    srun apptainer exec --nv rmt.sif python -m rmt_dist.launching.srun recipes/rmt_l.yaml run.dir=$RUN_DIR

Same as a launch/slurm.py task: torch.distributed env from SLURM's, rmt_dist.train,
FINISHED after a full run, and after a preemption save (exit code 75) a requeue through
scontrol when the task can reach it; otherwise the batch script should requeue on
srun's exit code 75 (docker/README.md shows the three lines).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..config import ConfigError, load_config
from ..errors import EXIT_BAD_INPUT, report
from .task import run_rank


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        print("usage: python -m rmt_dist.launching.srun RECIPE [key=value ...]", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        cfg = load_config(argv[0], argv[1:])
    except ConfigError as e:
        return report(e)
    run_dir = str(Path(cfg.run.dir).resolve())
    rc, _ = run_rank(
        argv[0], [*argv[1:], f"run.dir={run_dir}"], run_dir, cfg.slurm.max_requeues, cfg.run.stop_after_steps
    )
    return rc


if __name__ == "__main__":
    sys.exit(main())
