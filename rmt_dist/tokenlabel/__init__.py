"""Token labeling (Jiang et al., NeurIPS 2021) for the starred RMT models."""

from .loss import TokenLabelLoss, mixtoken_lam, soft_cross_entropy
from .store import StoreMeta, TokenLabelStore, TokenLabelStoreError
from .targets import crop_aligned_targets, mix_ground_truth

__all__ = ["StoreMeta", "TokenLabelLoss", "TokenLabelStore", "TokenLabelStoreError", "crop_aligned_targets",
           "mix_ground_truth", "mixtoken_lam", "soft_cross_entropy"]
