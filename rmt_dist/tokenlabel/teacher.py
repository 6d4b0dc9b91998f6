"""A teacher for token labeling: any timm model + weights, read as per-location logits."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .store import TokenLabelStoreError


def load_weights(path: str | os.PathLike, ema: bool = False) -> dict[str, torch.Tensor]:
    """A plain state dict from a .safetensors/.pth file, or a run/checkpoint dir of this project."""
    path = Path(path)
    if path.is_dir():
        from ..export import load_consolidated  # the engine's reader of its sharded checkpoints

        return load_consolidated(path, ema=ema)
    if not path.is_file():
        raise TokenLabelStoreError(f"teacher checkpoint {str(path)!r} does not exist")
    from timm.models import load_state_dict  # .safetensors/.pth, nested model/state_dict/EMA keys, module.

    return load_state_dict(str(path), use_ema=ema)


def build_teacher(name: str, checkpoint: str | None, num_classes: int, *, ema: bool = False,
                  pretrained: bool = False) -> nn.Module:
    import timm

    import rmt_dist.models  # noqa: F401  (registers the RMT models with timm)

    if checkpoint is None and not pretrained:
        raise TokenLabelStoreError(
            "a teacher needs trained weights: pass --checkpoint PATH (a .safetensors/.pth file or a run dir) "
            "or --pretrained (timm's hub weights)"
        )
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes)
    except RuntimeError as e:
        raise TokenLabelStoreError(f"teacher {name!r}: {e}") from None
    if checkpoint is not None:
        sd = load_weights(checkpoint, ema=ema)
        from ..models.rmt import RMT, checkpoint_filter_fn

        if isinstance(model, RMT):  # released RMT checkpoints carry buffers this model recomputes
            sd = checkpoint_filter_fn(sd, model)
        head = model.get_classifier()
        head_key = next((k for k, p in model.named_parameters() if p is getattr(head, "weight", None)), None)
        if head_key is not None and head_key in sd and sd[head_key].shape[0] != num_classes:
            raise TokenLabelStoreError(
                f"teacher checkpoint {checkpoint!r} has {sd[head_key].shape[0]} classes but the dataset has "
                f"{num_classes}; use a teacher trained on the same classes"
            )
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise TokenLabelStoreError(
                f"teacher checkpoint {checkpoint!r} does not fit timm model {name!r}: "
                f"missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
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

    feats = model.forward_features(images)
    nhwc_head = isinstance(model, RMT) or getattr(model, "output_fmt", "NCHW") == "NHWC"
    if isinstance(model, RMT) and model.token_label:
        b, h, w, _ = feats.shape
        return model.forward_aux(feats).reshape(b, h, w, -1)
    if feats.ndim == 3:  # (B, N, C) tokens, maybe with prefix tokens: the head takes (B', 1, C)
        feats = feats[:, getattr(model, "num_prefix_tokens", 0):]
        b, n, c = feats.shape
        side = int(round(n ** 0.5))
        if side * side != n:
            raise TokenLabelStoreError(f"teacher tokens ({n}) do not form a square grid")
        return model.forward_head(feats.reshape(b * n, 1, c)).reshape(b, side, side, -1)
    if feats.ndim != 4:
        raise TokenLabelStoreError(f"teacher forward_features returned shape {tuple(feats.shape)}; expected a map")
    nhwc = feats if nhwc_head else feats.permute(0, 2, 3, 1)
    b, h, w, c = nhwc.shape
    one_by_one = nhwc.reshape(b * h * w, 1, 1, c)
    if not nhwc_head:
        one_by_one = one_by_one.permute(0, 3, 1, 2)
    return model.forward_head(one_by_one).reshape(b, h, w, -1)
