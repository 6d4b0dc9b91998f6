"""rmt-dist: train RMT (CVPR 2024) at ImageNet scale.

Importing this package is cheap and has no side effects: it imports neither torch nor timm,
so `python -m rmt_dist.config`, every command's `--help` and `launch/slurm.py --dry-run`
start in well under a second. The RMT models are registered with timm (`rmt_t`, `rmt_s`,
`rmt_b`, `rmt_l`, `rmt_test`) on `import rmt_dist.models`; code that calls
`timm.create_model('rmt_s')` imports `rmt_dist.models` (or its factory) first.
"""

__version__ = "0.1.0"
