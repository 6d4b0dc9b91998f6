"""fp32 / bf16 (autocast) / fp16 (autocast + dynamic loss scaling) for the torch strategies.

DeepSpeed runs its own precision and loss scaling from the generated config (deepspeed_config.py).
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def build_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """Dynamic loss scaling for fp16: an overflow step is skipped and the scale halved."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
