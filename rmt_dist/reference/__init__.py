"""The paper's training runs as data: per-epoch figures from qhfan/RMT's released logs.

`official_logs.json` holds, for RMT-T/S/B/L and the starred S*/B*/L*, the columns epoch,
train_lr, train_loss, test_acc1 and test_ema_acc1 (percent) of `RMT_log/*.txt` in
qhfan/RMT (its "source" names the files and the commit they were read at; RMT-B is
`rmt_m.txt`, the starred runs `*_label.txt`). Some logs skip an epoch (rmt_s lacks 3 and
ends at 286, rmt_b lacks 6, rmt_l lacks 2): the epochs listed are those logged.

Two facts of those logs matter when comparing: `train_lr` at epoch e is the mean lr epoch
e trained with (`engine.py` logs `optimizer.param_groups[0]["lr"]` at each step), and that
lr lags timm's scheduler by one epoch (`main.py` calls `lr_scheduler.step(epoch)` after
training epoch `epoch`: epochs 0 and 1 both train at 1e-6). The cosine runs over all epochs
from epoch 0 with the warm-up laid over its first 5 (timm CosineLRScheduler), not after
them. `optim.schedule: per_epoch_timm` (rmt_dist/engine/optim.py) reproduces it exactly.
No torch here: status and compare read this without importing it.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

DATA_FILE = "official_logs.json"


@cache
def _data() -> dict:
    return json.loads(resources.files(__name__).joinpath(DATA_FILE).read_text())


def names() -> list[str]:
    return sorted(_data()["runs"])


def source() -> dict:
    return dict(_data()["source"])


def reference(name: str) -> dict[str, list]:
    """Columns of one official run: {"epoch": [...], "train_lr": [...], ...}."""
    runs = _data()["runs"]
    if name not in runs:
        raise KeyError(f"no official run named {name!r}; choose one of {', '.join(sorted(runs))}")
    return runs[name]


def at_epoch(name: str, epoch: int, column: str) -> float | None:
    """`column` of the official run at `epoch` (None where its log has no such epoch)."""
    ref = reference(name)
    try:
        return ref[column][ref["epoch"].index(epoch)]
    except ValueError:
        return None
