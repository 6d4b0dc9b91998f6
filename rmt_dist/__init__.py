"""rmt-dist: train RMT (CVPR 2024) at ImageNet scale."""

import sys as _sys

__version__ = "0.1.0"
# Commands that only read files answer in well under a second without torch/timm; everything
# else (`import rmt_dist` included) registers RMT with timm here.
_LIGHT_COMMANDS = ("rmt_dist.status", "rmt_dist.compare")
_orig = getattr(_sys, "orig_argv", [])
if not any(_orig[i:i + 2] == ["-m", c] for c in _LIGHT_COMMANDS for i in range(len(_orig))):
    from . import models  # noqa: F401  (registers RMT with timm)
