"""Training losses: soft-target cross-entropy, or the token-labeling loss (rmt_dist.tokenlabel)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import Config


class SoftTargetCrossEntropy:
    """Mean over the batch of -sum(target * log_softmax(logits)); targets are soft (mixup,
    label smoothing already applied by the loader). Token-label outputs use their cls logits."""

    def __call__(self, output, targets: torch.Tensor) -> torch.Tensor:
        logits = output[0] if isinstance(output, (tuple, list)) else output
        return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def build_criterion(cfg: Config):
    if cfg.tokenlabel.enabled:
        from ..tokenlabel.loss import build_token_label_criterion

        return build_token_label_criterion(cfg)
    return SoftTargetCrossEntropy()
