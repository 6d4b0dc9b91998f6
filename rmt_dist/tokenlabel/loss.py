"""Token-labeling loss: soft cross entropy on the class output and on every token.

The model (train mode, MixToken on) returns (cls_logits [B, C], aux_logits [B, N, C], box)
with the aux output already un-mixed to the unmixed images' token order, and `box` the
MixToken box on the token grid (rows r1:r2, cols c1:c2). The class output saw a mix of two
images, so its target is mixed by the kept area: lam = 1 - box area / N.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def mixtoken_lam(box, num_tokens: int) -> float:
    if box is None:
        return 1.0
    r1, c1, r2, c2 = (int(v) for v in box)
    return 1.0 - (r2 - r1) * (c2 - c1) / num_tokens


class TokenLabelLoss(nn.Module):
    def __init__(self, cls_weight: float = 1.0, dense_weight: float = 0.5):
        super().__init__()
        if cls_weight + dense_weight <= 0:
            raise ValueError(
                f"tokenlabel.cls_weight + dense_weight must be > 0, got {cls_weight} + {dense_weight}"
            )
        self.cls_weight = cls_weight
        self.dense_weight = dense_weight

    def forward(self, outputs, cls_target: torch.Tensor, dense_target: torch.Tensor) -> torch.Tensor:
        cls_logits, aux_logits, box = outputs
        b, n, c = aux_logits.shape
        if dense_target.shape != (b, n, c):
            raise ValueError(
                f"dense target shape {tuple(dense_target.shape)} does not match the model's token output "
                f"{(b, n, c)}: tokenlabel.size must equal the model's final grid side ({int(n**0.5)} here)"
            )
        lam = mixtoken_lam(box, n)
        if lam < 1.0:
            cls_target = lam * cls_target + (1.0 - lam) * cls_target.flip(0)
        loss_cls = soft_cross_entropy(cls_logits, cls_target)
        loss_dense = soft_cross_entropy(aux_logits.reshape(-1, c), dense_target.reshape(-1, c))
        return self.cls_weight * loss_cls + self.dense_weight * loss_dense


def build_token_label_criterion(cfg):
    """The engine's criterion for tokenlabel.enabled: (model output, (cls, dense) targets) -> loss."""
    loss = TokenLabelLoss(cfg.tokenlabel.cls_weight, cfg.tokenlabel.dense_weight)

    def criterion(output, targets):
        if not isinstance(output, tuple):
            raise ValueError(
                "token labeling needs a token-label model in train mode (model.token_label=true)"
            )
        cls_target, dense_target = targets
        return loss(output, cls_target, dense_target)

    return criterion
