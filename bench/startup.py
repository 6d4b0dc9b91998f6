"""Start-up cost of the commands a user types on a login node: CPU seconds per command.

    python bench/startup.py [--root DIR] [--repeat 3] [--json OUT]

Each command runs in a fresh interpreter (`sys.executable`, cwd = DIR, DIR first on
PYTHONPATH) and is charged the user+sys CPU time of that child (`resource.getrusage
(RUSAGE_CHILDREN)`), the best of --repeat runs: CPU rather than wall time, because on a shared
login node wall time mostly measures the neighbours. `--root` points at another checkout
(e.g. `git archive HEAD~1 | tar -x -C /tmp/old`) to compare before/after side by side.
Results go to docs/perf.md ("Start-up").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

RECIPE = "recipes/rmt_l.yaml"
HELPS = [
    "rmt_dist.config",
    "rmt_dist.train",
    "rmt_dist.evaluate",
    "rmt_dist.export",
    "rmt_dist.status",
    "rmt_dist.compare",
    "rmt_dist.demo",
    "rmt_dist.data.convert",
    "rmt_dist.data.verify",
    "rmt_dist.tokenlabel.generate",
    "rmt_dist.tokenlabel.import_tlt",
]


def commands() -> dict[str, list[str]]:
    py = sys.executable
    out = {
        "import rmt_dist": [py, "-c", "import rmt_dist"],
        "import rmt_dist.config": [py, "-c", "import rmt_dist.config"],
        f"python -m rmt_dist.config {RECIPE}": [py, "-m", "rmt_dist.config", RECIPE],
        f"launch/slurm.py {RECIPE} --dry-run": [py, "launch/slurm.py", RECIPE, "--dry-run"],
        "launch/slurm.py --help": [py, "launch/slurm.py", "--help"],
        "launch/local.py --help": [py, "launch/local.py", "--help"],
    }
    for m in HELPS:
        out[f"python -m {m} --help"] = [py, "-m", m, "--help"]
    return out


def cpu_seconds(cmd: list[str], root: Path) -> float:
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/startup.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parents[1],
        help="checkout to time (default: this one)",
    )
    p.add_argument("--repeat", type=int, default=3, help="runs per command; the best is reported (default 3)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    results = {}
    for name, cmd in commands().items():
        results[name] = min(cpu_seconds(cmd, args.root.resolve()) for _ in range(args.repeat))
        print(f"{results[name]:7.2f} s CPU  {name}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
