"""python -m rmt_dist.config RECIPE [key=value ...] [--world-size N]: print the resolved recipe."""

from __future__ import annotations

import argparse
import sys

from ..errors import report
from . import ConfigError, derive, load_config, to_yaml
from .job_size import world_size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rmt_dist.config", description=__doc__)
    p.add_argument("recipe", help="recipe YAML file, e.g. recipes/rmt_l_tokenlabel.yaml")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. optim.lr=1e-3")
    p.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="ranks to derive lr / EMA decay for (default: slurm.nodes x tasks per node)",
    )
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.recipe, args.overrides)
        world = args.world_size or world_size(cfg.slurm)
        cfg = derive(cfg, world)
    except ConfigError as e:
        return report(e)
    sys.stdout.write(to_yaml(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
