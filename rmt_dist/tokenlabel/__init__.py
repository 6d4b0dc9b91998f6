"""Token labeling (Jiang et al., NeurIPS 2021) for the starred RMT models.

Names are resolved lazily so the store tools (`python -m rmt_dist.tokenlabel.import_tlt`,
`--help`, the launcher's pre-flight) do not pay for torch imports they do not use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "StoreMeta": "store",
    "TokenLabelStore": "store",
    "TokenLabelStoreError": "store",
    "TokenLabelLoss": "loss",
    "mixtoken_lam": "loss",
    "soft_cross_entropy": "loss",
    "crop_aligned_targets": "targets",
    "mix_ground_truth": "targets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rmt_dist.tokenlabel' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
