"""Exponential moving average of the weights, kept where the weights live.

The strategy hands over `sources`: name -> the tensor holding this rank's part of each
parameter/buffer (a DTensor shard under FSDP2, the flat partition under ZeRO-3, the
full tensor otherwise). The EMA mirrors exactly that, so it is sharded like the model
and an update is a local lerp with no communication:

    ema = decay * ema + (1 - decay) * weights        (after every applied optimizer step)

`decay` is cfg.derived.ema_decay (the official rule, scaled to the global batch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.distributed.tensor import DTensor


def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _clone_like(src: torch.Tensor, on_cpu: bool) -> torch.Tensor:
    """An fp32 copy of `src` with the same sharding (DTensor in, DTensor out)."""
    dtype = torch.float32 if src.is_floating_point() else src.dtype
    src = src.detach()
    if isinstance(src, DTensor):
        loc = src.to_local().to(dtype=dtype, device="cpu" if on_cpu else src.device, copy=True)
        return DTensor.from_local(
            loc, src.device_mesh, src.placements, run_check=False, shape=src.shape, stride=src.stride()
        )
    return src.to(dtype=dtype, device="cpu" if on_cpu else src.device, copy=True)


class Ema:
    def __init__(
        self, sources: dict[str, torch.Tensor], decay: float, on_cpu: bool = False, every_steps: int = 1
    ):
        if not 0.0 < decay < 1.0:
            raise ValueError(
                f"EMA decay must be in (0, 1), got {decay} (check ema.decay / cfg.derived.ema_decay)"
            )
        # Updating every k steps with decay**k keeps the same averaging horizon in images.
        self.decay = decay**every_steps
        self.every_steps = every_steps
        self.on_cpu = on_cpu
        self.state: dict[str, torch.Tensor] = {name: _clone_like(t, on_cpu) for name, t in sources.items()}

    @torch.no_grad()
    def update(self, sources: dict[str, torch.Tensor], step: int) -> bool:
        """Fold the current weights in (only every `every_steps` steps); True when it did."""
        if step % self.every_steps:
            return False
        weight = 1.0 - self.decay
        float_dst, float_src = [], []
        for name, shadow in self.state.items():
            dst, src = local(shadow), local(sources[name]).detach()
            if dst.is_floating_point():
                float_dst.append(dst)
                float_src.append(src.to(device=dst.device, dtype=dst.dtype))
            else:
                dst.copy_(src)
        if float_dst:
            torch._foreach_lerp_(float_dst, float_src, weight)
        return True

    @contextlib.contextmanager
    def swapped_in(self, sources: dict[str, torch.Tensor]) -> Iterator[None]:
        """Temporarily put the EMA weights into the live tensors (evaluation), then restore."""
        backup = {}
        with torch.no_grad():
            for name, shadow in self.state.items():
                live = local(sources[name])
                backup[name] = live.detach().clone()
                live.copy_(local(shadow).to(device=live.device, dtype=live.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for name, saved in backup.items():
                    local(sources[name]).copy_(saved)

    def finite(self) -> bool:
        return all(bool(torch.isfinite(local(t)).all()) for t in self.state.values() if t.is_floating_point())
