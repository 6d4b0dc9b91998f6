"""rmt-dist: train RMT (CVPR 2024) at ImageNet scale."""

__version__ = "0.1.0"
from . import models  # noqa: F401  (registers RMT with timm)

