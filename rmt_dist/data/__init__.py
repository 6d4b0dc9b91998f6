"""Data: ImageNet-style folders -> FFCV .beton files -> reproducible distributed loaders.

    python -m rmt_dist.data.convert SRC OUT.beton [--classes ...]   # see convert.py
    python -m rmt_dist.data.digits OUT_DIR                          # the embedded demo dataset

    from rmt_dist.data import build_train_loader, build_eval_loader  # see loader.py

Names are resolved lazily so `python -m rmt_dist.data.convert` does not pay for numba
and torch imports it does not use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_train_loader": "loader",
    "build_eval_loader": "loader",
    "TrainLoader": "loader",
    "EvalLoader": "loader",
    "beton_fingerprint": "meta",
    "read_meta": "meta",
    "meta_path": "meta",
    "prepare_digits": "digits",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rmt_dist.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
