"""Sweep points: `--sweep key=v1,v2 [--sweep key2=a,b]` over one or more recipes.

Each point is one recipe plus the overrides that make it a point (the cartesian product
of the sweeps); its run dir is the recipe's run.dir with a sub-dir naming the point, so
points never share a run dir.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import LaunchError


@dataclass(frozen=True)
class Point:
    recipe: str
    overrides: tuple[str, ...]  # the sweep's assignments only

    @property
    def name(self) -> str:
        stem = Path(self.recipe).stem
        return " ".join([stem, *self.overrides]) if self.overrides else stem

    def slug(self) -> str:
        """Sub-dir name: 'attention-gmm_lr-0.001' (the last key part, then the value)."""
        parts = [f"{k.rsplit('.', 1)[-1]}-{v}" for k, v in (o.split("=", 1) for o in self.overrides)]
        return re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(parts))


def parse_sweep(spec: str) -> tuple[str, list[str]]:
    key, eq, values = spec.partition("=")
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not eq or not key.strip() or not vals:
        raise LaunchError(f"--sweep {spec!r}: expected key=v1,v2,... e.g. --sweep model.attention=masa,gmm")
    if len(set(vals)) != len(vals):
        raise LaunchError(f"--sweep {spec!r}: a value is repeated; list each value once")
    return key.strip(), vals


def points(recipes: list[str], sweeps: list[str]) -> list[Point]:
    axes = [parse_sweep(s) for s in sweeps]
    keys = [k for k, _ in axes]
    if len(set(keys)) != len(keys):
        raise LaunchError(
            f"--sweep names {keys} more than once; give each key one --sweep with all its values"
        )
    combos = list(itertools.product(*[[f"{k}={v}" for v in vals] for k, vals in axes]))
    return [Point(r, tuple(c)) for r in recipes for c in combos]


def point_run_dirs(pts: list[Point], base_dirs: list[Path]) -> list[Path]:
    """Each point's run dir: its recipe's run dir (+ recipe stem when recipes share one) / slug."""
    shared = {
        d
        for d in base_dirs
        if base_dirs.count(d) > 1 and len({p.recipe for p, b in zip(pts, base_dirs) if b == d}) > 1
    }
    dirs = []
    for p, base in zip(pts, base_dirs):
        d = base / Path(p.recipe).stem if base in shared else base
        dirs.append(d / p.slug() if p.overrides else d)
    seen: dict[Path, Point] = {}
    for p, d in zip(pts, dirs):
        if d in seen:
            raise LaunchError(
                f"sweep points {seen[d].name!r} and {p.name!r} would share run dir {str(d)!r}; "
                "give the recipes different run.dir values"
            )
        seen[d] = p
    return dirs
