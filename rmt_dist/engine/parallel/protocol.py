"""The Strategy protocol: exactly what the Trainer (and CheckpointManager) call on a strategy."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ...checkpoint_format.dirs import layout_mismatch  # noqa: F401  (torch-free: pre-flight shares it)


@dataclass
class StepOutcome:
    grad_norm: float  # before clipping; nan when the step was abandoned before backward
    applied: bool  # False: the update was skipped (non-finite loss/gradients, fp16 overflow)
    overflow: bool = False  # fp16 loss-scale overflow (a normal event, not a bad step)


class Strategy(Protocol):
    module: nn.Module  # the model, parameter names without wrapper prefixes
    scaler: Any  # torch GradScaler for fp16 under ddp/fsdp, else None

    def train(self, mode: bool = True) -> None: ...

    def forward(self, images: torch.Tensor) -> Any: ...

    def backward(self, loss: torch.Tensor, accum_steps: int, sync: bool) -> None: ...

    def finish_step(self, lr: float) -> StepOutcome:
        """Clip, step (or skip on non-finite gradients, on every rank alike), zero the gradients."""
        ...

    def skip_step(self, lr: float, backwards_done: int) -> StepOutcome:
        """A step whose loss was non-finite on some rank after `backwards_done` backwards:
        drop it. `applied=True` in the result means the strategy could not drop it."""
        ...

    def cannot_skip_hint(self) -> str:
        """Why skip_step may apply an update, and the fix (for the error line)."""
        ...

    def after_step(self) -> None:
        """Called after every applied optimizer step."""
        ...

    def settle(self) -> None:
        """Bring the parameters back to their at-rest layout (after an eval forward)."""
        ...

    def ema_sources(self) -> dict[str, torch.Tensor]: ...

    def ema_swapped(self, ema) -> contextlib.AbstractContextManager[None]: ...

    def params_finite(self) -> bool: ...

    def save(self, path: Path, ema: dict | None) -> None: ...

    def load(self, path: Path, ema: dict | None) -> None: ...

    def extra_state(self) -> dict: ...

    def load_extra_state(self, extra: dict) -> None: ...

    def full_state_dict(self, ema: dict | None = None) -> dict[str, torch.Tensor]: ...

    def checkpoint_identity(self) -> dict:
        """What a checkpoint records about the layout it was written in (train_state.json)."""
        ...

    def refuses(self, saved: dict) -> str | None:
        """Why a checkpoint with train state `saved` cannot be loaded by this strategy (with
        the fix), or None. World-size changes are converted, never refused."""
        ...
