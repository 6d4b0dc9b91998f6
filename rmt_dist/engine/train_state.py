"""Where a run stands: the position in the data stream and the skipped-step counters.

`step` counts optimizer steps done (1-based in logs); `epoch` and `step_in_epoch` say where
the data stream is. `world_size` and `global_batch` describe this run (never taken from a
checkpoint): a checkpoint of another world size is converted on load.
"""

from __future__ import annotations

from dataclasses import dataclass

_COUNTERS = ("step", "epoch", "step_in_epoch", "bad_streak", "bad_steps", "overflow_steps")


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    bad_streak: int = 0  # consecutive non-finite steps up to `step`
    bad_steps: int = 0  # non-finite steps skipped in the whole run
    overflow_steps: int = 0  # fp16 loss-scale overflows skipped in the whole run
    world_size: int = 1
    global_batch: int = 0

    def state_dict(self) -> dict:
        return {
            **{k: getattr(self, k) for k in _COUNTERS},
            "world_size": self.world_size,
            "global_batch": self.global_batch,
        }

    def same_layout(self, saved: dict) -> bool:
        """`saved` was written on this world size and global batch: its data position (counted in
        global batches) and per-rank state apply as they are."""
        return (
            saved["world_size"] == self.world_size
            and saved.get("global_batch", self.global_batch) == self.global_batch
        )

    def load_state_dict(self, saved: dict, steps_per_epoch: int) -> None:
        """Take the position and counters of `saved` (a checkpoint's train state). From another
        world size the position in the epoch becomes the same images seen so far, counted in
        this run's global batch; a position at or past the epoch's end starts the next epoch
        (else the epoch loop would never run nor end)."""
        self.step, self.epoch = saved["step"], saved["epoch"]
        self.bad_streak = saved.get("bad_streak", 0)
        self.bad_steps, self.overflow_steps = saved.get("bad_steps", 0), saved.get("overflow_steps", 0)
        if self.same_layout(saved):
            self.step_in_epoch = saved["step_in_epoch"]
        else:
            seen = saved["step_in_epoch"] * saved["global_batch"]
            self.step_in_epoch = seen // self.global_batch
        if self.step_in_epoch >= steps_per_epoch:
            self.next_epoch()

    def count(self, bad: bool, overflow: bool) -> None:
        """One optimizer step done (applied or skipped); the data position moves on by one step."""
        self.step += 1
        self.step_in_epoch += 1
        if bad:
            self.bad_steps += 1
            self.bad_streak += 1
        else:
            self.bad_streak = 0
        self.overflow_steps += int(overflow)

    def next_epoch(self) -> None:
        self.epoch += 1
        self.step_in_epoch = 0
