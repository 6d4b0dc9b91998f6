"""metrics.jsonl + TensorBoard, written by rank 0; a resumed run continues the same series.

Record keys (design.md): train records carry step, epoch, loss, lr, img_per_s (plus
grad_norm, skipped_steps, bad_steps, overflow_steps, mem_gb, and mfu where the device
peak is known); eval records carry step, epoch, eval/top1, eval/top5 and, with an EMA,
eval_ema/top1, eval_ema/top5. TensorBoard tags: "train/<key>" for train
records, the key itself for eval records.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..atomic import atomic_write
from ..checkpoint_format.dirs import METRICS_FILE

TB_DIR = "tb"
_NOT_SCALARS = {"step", "epoch", "kind"}


def _clean(value):
    """JSON has no NaN/inf: write null (the record still says the step happened)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def truncate_after(path: Path, step: int) -> int:
    """Drop records past `step` (written after the checkpoint being resumed); returns how many."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:  # a line cut by a crash
            dropped += 1
            continue
        if rec.get("step", 0) > step:
            dropped += 1
        else:
            kept.append(line)
    atomic_write(path, "".join(k + "\n" for k in kept))  # no partial temp file left on a full disk
    return dropped


class MetricsWriter:
    def __init__(self, run_dir: str | os.PathLike, enabled: bool, resume_step: int, tensorboard: bool = True):
        self.enabled = enabled
        self._file = None
        self._tb = None
        if not enabled:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / METRICS_FILE
        truncate_after(self.path, resume_step)
        self._file = open(self.path, "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a previous attempt wrote past the resumed step.
            self._tb = SummaryWriter(
                str(run_dir / TB_DIR), purge_step=resume_step + 1 if resume_step else None
            )

    def write(self, record: dict, prefix: str = "") -> None:
        if not self.enabled:
            return
        assert self._file is not None  # opened in __init__ when enabled
        self._file.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if (
                    key not in _NOT_SCALARS
                    and isinstance(value, (int, float))
                    and not isinstance(value, bool)
                ):
                    self._tb.add_scalar(prefix + key, value, record["step"])
            self._tb.flush()

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None
        if self._tb:
            self._tb.close()
            self._tb = None
