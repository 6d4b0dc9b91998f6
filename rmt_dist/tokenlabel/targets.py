"""Crop-aligned token-label targets: the image's crop (and flip), applied to its score map.

The teacher's score map covers a region of the source image (its view, `view.py`; the
whole image for our generator's squash view). The crop the loader took from the image (a
box in fractions of the map, `view.to_map_coords`) is RoI-aligned on the map to a
`size x size` grid (the student's token grid) and to a 1x1 whole-crop (cls) target; in the
crop_first order a horizontally flipped crop flips the aligned grid. Both are softmaxed over
classes and label-smoothed, as in TokenLabeling (`get_label`, tlt/data/mixup.py). In the tlt
order the loader has already flipped and RandAugment-moved the map (`label_augment.py`) and
passes no flips here.

Sampling, as tlt's `roi_align` call (torchvision's defaults): each output bin averages
ceil(bin height) x ceil(bin width) bilinear samples, in map cells (`sampling_ratio=0`,
adaptive, per RoI); so the 1x1 cls target averages about one sample per map cell the crop
spans, not a fixed 2x2.

Border clamp: where a crop reaches past the map (a teacher view smaller than the image,
e.g. a centre crop, or rounding at the edges), its sample points take the nearest map cell,
as if the map's edge cells extended outward (the map is replicate-padded before the RoI-align;
torchvision would otherwise give 0 logits more than one cell outside).

One deliberate difference from TokenLabeling's code: tlt passes roi_align boxes built from
the crop's (i/H, j/W, (i+h)/H, (j+w)/W), i.e. (y1, x1, y2, x2), where roi_align expects
(x1, y1, x2, y2), and scales all four by the map width (`get_label` and
`RandomResizedCropAndInterpolationWithCoords`, tlt/data/mixup.py and
label_transforms_factory.py). Its targets therefore come from the transposed crop (exact
only for crops symmetric about the diagonal), and the published starred numbers (RMT and
LV-ViT) were trained with that transposed box. Here x is scaled by the map width and y by
its height. (tlt flips image and map together before the crop is recorded,
`RandomHorizontalFlipWithLabel`, which is consistent; so is ours.) Smoothing is
(1 - s) p + s / C so targets sum to exactly 1.
"""

from __future__ import annotations

import math

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
    fractions of the map's width and height (may reach past [0, 1]: border clamp). flips:
    [B] bool, the crop was mirrored after it was taken (crop_first order).
    Returns cls [B, C] and dense [B, size*size, C] (row-major token order), each a
    probability distribution per row.
    """
    maps = dense_score_maps(scores, indices, num_classes)
    b, _, h, w = maps.shape
    scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=maps.device)
    cells = boxes.to(maps.device, torch.float32) * scale
    # Border clamp: replicate the edge cells far enough that every sample point lies on the map.
    over = float(torch.cat([-cells[:, :2], cells[:, 2:3] - w, cells[:, 3:4] - h], 1).max()) if b else 0.0
    pad = math.ceil(over) + 1 if over > 0 else 0
    if pad:
        maps = F.pad(maps, (pad, pad, pad, pad), mode="replicate")
        cells = cells + pad
    rois = torch.cat([torch.arange(b, device=maps.device, dtype=torch.float32)[:, None], cells], dim=1)
    # aligned=True: continuous coordinates, cell i spans [i, i+1); a box of the whole map is
    # (0, 0, w, h) (tlt gets the same by subtracting 0.5 with aligned=False). sampling_ratio=0:
    # torchvision's adaptive default, as tlt.
    grid = roi_align(maps, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    whole = roi_align(maps, rois, output_size=(1, 1), spatial_scale=1.0, sampling_ratio=0, aligned=True)
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
