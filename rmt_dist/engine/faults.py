"""Fault injection for tests, installed by `run()` only when its environment variables are set:

    RMT_DIST_INJECT_NAN_AT_STEPS="5,7-9"   the loss of those optimizer steps (1-based, as
                                          logged) is NaN on one rank, RMT_DIST_INJECT_NAN_RANK
                                          (default: the last rank), so the all-rank agreement
                                          on skipping is exercised too
    RMT_DIST_INJECT_SIGTERM_AT_STEP=k      the last rank sends itself SIGTERM during step k, as
                                          a preemption would (the real handler, all-rank agreement)

A Trainer built without `faults` runs no injection code at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

ENV_STEPS = "RMT_DIST_INJECT_NAN_AT_STEPS"
ENV_RANK = "RMT_DIST_INJECT_NAN_RANK"
ENV_SIGNAL = "RMT_DIST_INJECT_SIGTERM_AT_STEP"


def parse_steps(text: str) -> set[int]:
    steps: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        try:
            steps.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise ValueError(f"{ENV_STEPS}={text!r}: expected steps like '5,7-9'") from None
    return steps


@dataclass
class Faults:
    """What this rank injects: a NaN loss at `nan_steps`, SIGTERM to itself during `sigterm_step`."""

    nan_steps: set[int] = field(default_factory=set)
    sigterm_step: int | None = None

    def step_started(self, step: int) -> None:
        if step == self.sigterm_step:
            import signal

            os.kill(os.getpid(), signal.SIGTERM)

    def loss(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        # Multiplying (not adding) also makes the gradients NaN, like a real blow-up.
        return loss * float("nan") if step in self.nan_steps else loss


def faults_from_env(rank: int, world_size: int) -> Faults | None:
    """This rank's faults from the environment; None when none is asked for."""
    steps = parse_steps(os.environ.get(ENV_STEPS, ""))
    text = os.environ.get(ENV_SIGNAL, "")
    sigterm = int(text) if text.strip() else None
    if not steps and sigterm is None:
        return None
    nan_here = bool(steps) and rank == int(os.environ.get(ENV_RANK, world_size - 1))
    return Faults(
        nan_steps=steps if nan_here else set(), sigterm_step=sigterm if rank == world_size - 1 else None
    )
