"""Fault injection for tests: RMT_DIST_INJECT_NAN_AT_STEPS="5,7-9" makes the loss of those
optimizer steps (1-based, as logged) NaN on one rank, RMT_DIST_INJECT_NAN_RANK (default:
the last rank), so the all-rank agreement on skipping is exercised too."""

from __future__ import annotations

import os

import torch

ENV_STEPS = "RMT_DIST_INJECT_NAN_AT_STEPS"
ENV_RANK = "RMT_DIST_INJECT_NAN_RANK"


def parse_steps(text: str) -> set[int]:
    steps: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        try:
            steps.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise ValueError(f"{ENV_STEPS}={text!r}: expected steps like '5,7-9'") from None
    return steps


class NanInjector:
    def __init__(self, rank: int, world_size: int):
        self.steps = parse_steps(os.environ.get(ENV_STEPS, ""))
        self.active = bool(self.steps) and rank == int(os.environ.get(ENV_RANK, world_size - 1))

    def __call__(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        # Multiplying (not adding) also makes the gradients NaN, like a real blow-up.
        return loss * float("nan") if self.active and step in self.steps else loss


ENV_SIGNAL = "RMT_DIST_INJECT_SIGTERM_AT_STEP"


class SignalInjector:
    """RMT_DIST_INJECT_SIGTERM_AT_STEP=k: the last rank sends itself SIGTERM during step k,
    as a preemption would (tests the real handler and the all-rank agreement)."""

    def __init__(self, rank: int, world_size: int):
        text = os.environ.get(ENV_SIGNAL, "")
        self.step = int(text) if text.strip() else None
        self.active = self.step is not None and rank == world_size - 1

    def __call__(self, step: int) -> None:
        if self.active and step == self.step:
            import signal

            os.kill(os.getpid(), signal.SIGTERM)
