"""Crop-aligned token-label targets: the image's crop and flip, applied to its score map.

For each sample the teacher's score map covers the whole source image. The crop the
loader took from that image (a box in fractions of the source width and height) is
RoI-aligned on the map to a `size x size` grid (the student's token grid) and to a 1x1
whole-crop target; a horizontally flipped image flips the aligned grid. Both are then
softmaxed over classes and label-smoothed, as in TokenLabeling.

Two deliberate differences from the TokenLabeling code (zihangJiang/TokenLabeling,
tlt/data/mixup.py): it passes boxes as (y1, x1, y2, x2) where torchvision's roi_align
expects (x1, y1, x2, y2), scaling both axes by the map's width, which transposes the box
(and breaks non-square maps); and it flips the whole map after recording the unflipped
crop box. Here x is scaled by the map width, y by its height, and the flip is applied to
the aligned grid. Smoothing is (1 - s) p + s / C so targets sum to exactly 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align


def dense_score_maps(scores: torch.Tensor, indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Top-k [B, H, W, k] -> dense [B, C, H, W] logits, 0 for classes outside the top-k (as the original)."""
    b, h, w, _ = scores.shape
    dense = torch.zeros(b, num_classes, h, w, dtype=torch.float32, device=scores.device)
    return dense.scatter_(1, indices.long().permute(0, 3, 1, 2), scores.float().permute(0, 3, 1, 2))


def smooth(probs: torch.Tensor, smoothing: float, dim: int = -1) -> torch.Tensor:
    return probs * (1.0 - smoothing) + smoothing / probs.shape[dim]


def crop_aligned_targets(
    scores: torch.Tensor,
    indices: torch.Tensor,
    boxes: torch.Tensor,
    flips: torch.Tensor,
    num_classes: int,
    size: int,
    smoothing: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-crop and per-token soft targets for a batch.

    scores, indices: [B, H, W, k] from the store. boxes: [B, 4] float (x1, y1, x2, y2) as
    fractions of the source image's width and height. flips: [B] bool, image was mirrored.
    Returns cls [B, C] and dense [B, size*size, C] (row-major token order), each a
    probability distribution per row.
    """
    maps = dense_score_maps(scores, indices, num_classes)
    b, _, h, w = maps.shape
    scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=maps.device)
    rois = torch.cat([torch.arange(b, device=maps.device, dtype=torch.float32)[:, None],
                      boxes.to(maps.device, torch.float32) * scale], dim=1)
    # aligned=True: continuous coordinates, pixel i spans [i, i+1); a box of the whole image
    # is (0, 0, w, h). sampling_ratio=2 matches torchvision's adaptive default at these sizes
    # while keeping the cost fixed.
    grid = roi_align(maps, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    whole = roi_align(maps, rois, output_size=(1, 1), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    flips = flips.to(maps.device, torch.bool)
    grid = torch.where(flips[:, None, None, None], grid.flip(-1), grid)
    cls = smooth(F.softmax(whole.flatten(1), dim=1), smoothing)
    dense = smooth(F.softmax(grid.flatten(2).transpose(1, 2), dim=-1), smoothing)
    return cls, dense


def mix_ground_truth(cls: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """The official option: lean on the ground truth, more where the teacher disagrees with it.

    Weight on the teacher: 0.5 when its top class equals the label, 0.9 otherwise
    (TokenLabelCrossEntropy with ground_truth=True).
    """
    gt = smooth(F.one_hot(labels.long(), cls.shape[1]).float(), smoothing)
    agree = (cls.argmax(1) == labels).float()[:, None]
    ratio = 0.9 - 0.4 * agree
    return cls * ratio + gt * (1 - ratio)
