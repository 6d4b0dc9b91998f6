"""RUN_DIR/launch.json: what the launcher submitted, for `rmt_dist.status` and later launches.

One object, rewritten (atomically) at each submission: the newest job id, when, the
recipe and overrides, the task logs, and `jobs`, every job id this run dir has had.
Nothing here imports torch or submitit.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..atomic import atomic_write

LAUNCH_FILE = "launch.json"


def read_launch(run_dir: str | os.PathLike) -> dict:
    try:
        return json.loads((Path(run_dir) / LAUNCH_FILE).read_text())
    except (OSError, ValueError):
        return {}


def record_launch(run_dir: str | os.PathLike, job_id: str, **info: object) -> None:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = read_launch(run_dir)
    jobs = [j for j in previous.get("jobs", []) if j != job_id] + [job_id]
    data = {"job_id": job_id, "submitted_at": time.time(), "jobs": jobs, **info}
    atomic_write(run_dir / LAUNCH_FILE, json.dumps(data, indent=1) + "\n")
