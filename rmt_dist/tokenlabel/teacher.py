"""A teacher for token labeling: any timm model + weights, read as per-location logits."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from .store import TokenLabelStoreError


def build_teacher(
    name: str, checkpoint: str | None, num_classes: int, *, ema: bool = False, pretrained: bool = False
) -> nn.Module:
    from ..models.factory import create_model
    from ..models.weights import WeightsError, load_into

    if checkpoint is None and not pretrained:
        raise TokenLabelStoreError(
            "a teacher needs trained weights: pass --checkpoint PATH (a .safetensors/.pth file or a run dir) "
            "or --pretrained (timm's hub weights)"
        )
    try:
        model = create_model(name, pretrained=pretrained, num_classes=num_classes)
    except RuntimeError as e:
        raise TokenLabelStoreError(f"teacher {name!r}: {e}") from None
    if checkpoint is not None:
        try:  # a class count other than the dataset's is an error here, not a fresh head
            load_into(model, checkpoint, ema=ema, what="teacher checkpoint", classes_of="the dataset")
        except WeightsError as e:
            raise TokenLabelStoreError(f"teacher {name!r}: {e}") from None
    return model.eval()


def per_location_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """[B, H, W, classes]: the classifier applied at every location of the final feature map.

    Token-label RMT teachers use their dense aux head (as TokenLabeling does with LV-ViT).
    Otherwise the model's own head is applied to each location as a 1x1 map: for heads
    that are pointwise then pooled (ResNet, NFNet, ConvNeXt, RMT's proj+BN+Swish+linear)
    this equals the head as a 1x1 convolution, which is what TokenLabeling does with
    NFNet-F6.
    """
    from ..models.rmt import RMT

    timm_model = cast(Any, model)  # timm's model API (forward_features/forward_head), not nn.Module's
    feats = timm_model.forward_features(images)
    nhwc_head = isinstance(model, RMT) or getattr(model, "output_fmt", "NCHW") == "NHWC"
    if isinstance(model, RMT) and model.token_label:
        b, h, w, _ = feats.shape
        return model.forward_aux(feats).reshape(b, h, w, -1)
    if feats.ndim == 3:  # (B, N, C) tokens, maybe with prefix tokens: the head takes (B', 1, C)
        feats = feats[:, getattr(model, "num_prefix_tokens", 0) :]
        b, n, c = feats.shape
        side = int(round(n**0.5))
        if side * side != n:
            raise TokenLabelStoreError(f"teacher tokens ({n}) do not form a square grid")
        return timm_model.forward_head(feats.reshape(b * n, 1, c)).reshape(b, side, side, -1)
    if feats.ndim != 4:
        raise TokenLabelStoreError(
            f"teacher forward_features returned shape {tuple(feats.shape)}; expected a map"
        )
    nhwc = feats if nhwc_head else feats.permute(0, 2, 3, 1)
    b, h, w, c = nhwc.shape
    one_by_one = nhwc.reshape(b * h * w, 1, 1, c)
    if not nhwc_head:
        one_by_one = one_by_one.permute(0, 3, 1, 2)
    return timm_model.forward_head(one_by_one).reshape(b, h, w, -1)
