"""Read plain weights: safetensors, a torch file (state dict or {"model"/"state_dict"/"module": ...})."""

from __future__ import annotations

from pathlib import Path

import torch


def load_weights(path: str) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file {path!r} does not exist (model.init_checkpoint)")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    sd = torch.load(p, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "module", "model_ema"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            return sd[key]
    return sd
