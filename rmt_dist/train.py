"""`python -m rmt_dist.train RECIPE [key=value ...]`: one rank of a training run.

Rank and world come from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT; the SLURM launcher sets the same); without them the run is a
single process. Exit codes: 0 done (or stopped at run.stop_after_steps), 75 stopped by
SIGTERM/SIGUSR2/request_stop() after the coordinated save (rmt_dist.engine.preempt.
EXIT_PREEMPTED), 1 failed, 2 bad command line or recipe.
"""

from __future__ import annotations

import argparse
import sys

from .errors import EXIT_BAD_INPUT, report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rmt_dist.train", description=__doc__.split("\n\n")[0])
    p.add_argument("recipe", help="recipe YAML, e.g. recipes/smoke.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. run.dir=runs/x optim.lr=1e-3")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse exits on --help / bad usage; callers want a return code
        return int(e.code or 0) if e.code in (0, None) else EXIT_BAD_INPUT
    from rmt_dist.config import ConfigError, load_config

    try:
        cfg = load_config(args.recipe, args.overrides)
    except ConfigError as e:
        return report(e)
    from rmt_dist.data.stage import StageError, stage

    try:
        cfg = stage(cfg)  # data.stage_dir: node-local copies, before the process group exists
    except StageError as e:
        return report(e)
    from rmt_dist.engine.run import run

    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
