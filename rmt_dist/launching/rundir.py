"""What a run directory holds, as far as launching is concerned.

A run dir is resumed by launching again with the same `run.dir` (requeues do exactly
that). Once a run has finished, a launcher writes `FINISHED` there, and launching into
that dir again is refused rather than silently training over it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .errors import LaunchError

FINISHED = "FINISHED"


def is_finished(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / FINISHED).is_file()


def mark_finished(run_dir: str | os.PathLike, **info: object) -> None:
    """Written once the training entry point returned 0 with no `run.stop_after_steps` cut."""
    path = Path(run_dir) / FINISHED
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{FINISHED}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}) + "\n")
    os.replace(tmp, path)


def check_not_finished(run_dir: str | os.PathLike) -> None:
    if is_finished(run_dir):
        raise LaunchError(
            f"run dir {str(run_dir)!r} holds a finished run ({FINISHED} is there); "
            f"pass run.dir=<new dir> to train again, or delete {str(run_dir)!r} to start over in it"
        )


def finished_after(rc: int, stop_after_steps: int | None) -> bool:
    """A clean exit is the end of the run unless the recipe asked to stop early."""
    return rc == 0 and stop_after_steps is None
