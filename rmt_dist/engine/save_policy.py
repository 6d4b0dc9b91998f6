"""When to save a checkpoint, and which checkpoints to keep (checkpoint.* of the recipe).

Save after every `every_steps` steps, at an epoch's end (`at_epoch_end`), at the schedule's
end, and when the run stops (at run.stop_after_steps, or on a stop request when
`save_on_signal`). Keep the newest `keep_last` complete checkpoints, and always the newest
one saved outside a streak of skipped non-finite steps (the last one known good), so a run
that blows up keeps a checkpoint to go back to however many saves the streak spans.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SavePolicy:
    every_steps: int
    at_epoch_end: bool
    save_on_signal: bool
    total_steps: int

    @classmethod
    def from_config(cls, checkpoint, total_steps: int) -> SavePolicy:
        return cls(checkpoint.every_steps, checkpoint.at_epoch_end, checkpoint.save_on_signal, total_steps)

    def wants_save(self, step: int, epoch_end: bool, stopping: bool, stop_requested: bool) -> bool:
        """After step `step`: `stopping` when the run ends here, `stop_requested` when by a signal."""
        return (
            step % self.every_steps == 0
            or (epoch_end and self.at_epoch_end)
            or step >= self.total_steps
            or (stopping and (not stop_requested or self.save_on_signal))
        )


@dataclass(frozen=True)
class Saved:
    path: Path
    step: int
    complete: bool
    bad_streak: int  # the saved state's run of skipped non-finite steps (0: a good checkpoint)


def to_prune(newest: Saved, older: list[Saved], keep_last: int) -> list[Path]:
    """Which of `older` (newest first, all older than `newest`) to delete after saving `newest`.
    Incomplete directories (interrupted saves) always go."""
    kept, good_kept, out = 1, newest.bad_streak == 0, []
    for c in older:
        if c.complete and kept < keep_last:
            kept += 1
            good_kept = good_kept or c.bad_streak == 0
            continue
        if c.complete and not good_kept and c.bad_streak == 0:
            good_kept = True  # the last checkpoint from before the streak
            continue
        out.append(c.path)
    return out
