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
e.g. a centre crop, rounding at the edges, or a crop the geometric label ops moved off the
map), its sample points take the nearest map cell, as if the map's edge cells extended
outward (torchvision's roi_align would give 0 logits more than one cell outside, and has no
border mode). roi_align's bilinear samples are separable, so each output bin is
`Ay[bin row] @ map @ Ax[bin col]^T`, with per-axis weights accumulated from the bin's
sample points clamped to [0, size - 1] (`_axis_weights`); samples past an edge are counted
in closed form, not enumerated, so memory and time do not grow with how far a box reaches
(replicate-padding the map by the reach, as this module once did, allocated a padded copy
per batch that grew with the square of it). Equal to roi_align (sampling_ratio=0,
aligned=True) on the clamped map to float rounding: tests/test_tokenlabel_targets.py.

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

import torch
import torch.nn.functional as F


def dense_score_maps(scores: torch.Tensor, indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Top-k [B, H, W, k] -> dense [B, C, H, W] logits, 0 for classes outside the top-k (as the original)."""
    b, h, w, _ = scores.shape
    dense = torch.zeros(b, num_classes, h, w, dtype=torch.float32, device=scores.device)
    return dense.scatter_(1, indices.long().permute(0, 3, 1, 2), scores.float().permute(0, 3, 1, 2))


def _axis_weights(lo: torch.Tensor, hi: torch.Tensor, bins: int, cells: int) -> torch.Tensor:
    """[B, bins, cells] float32: per output bin, the mean 1-D bilinear weight of roi_align's
    sample points along one axis, each point clamped to the map (border clamp).

    As torchvision's roi_align with aligned=True and sampling_ratio=0 (adaptive): the box
    [lo, hi) in cells starts at lo - 0.5 in sample coordinates, each of the `bins` bins holds
    g = ceil((hi - lo) / bins) samples at its sub-bin centres (computed in float32 as
    torchvision does, so g is the same integer). Samples at or below 0 put weight 1 on cell 0,
    at or above cells - 1 on the last cell: they are counted in closed form, and only the
    samples between (at most about 2 x cells per bin: the step is >= 0.5 cell when g > 1) are
    enumerated, so memory does not depend on how far the box reaches past the map.
    """
    # float32 and the same operations as torchvision (roi_end - roi_start), so g is its integer;
    # 0 for an empty box.
    g = torch.ceil(((hi - 0.5) - (lo - 0.5)) / bins).clamp(min=0)
    g64 = g.double()[:, None]
    lo64, hi64 = lo.double()[:, None], hi.double()[:, None]  # positions in float64: no drift far out
    bin_size = (hi64 - lo64) / bins
    step = bin_size / g64.clamp(min=1)
    p = torch.arange(bins, device=lo.device, dtype=torch.float64)[None, :]
    base = lo64 - 0.5 + p * bin_size + 0.5 * step  # each bin's first sample
    safe = step.clamp(min=1e-30)
    n_lo = torch.minimum(torch.floor(-base / safe) + 1, g64).clamp(min=0)  # samples with y <= 0
    k_hi = torch.maximum(
        torch.minimum(torch.ceil((cells - 1 - base) / safe), g64), n_lo
    )  # first y >= cells-1
    n_hi = g64 - k_hi
    window = int((k_hi - n_lo).max()) if k_hi.numel() else 0
    weights = torch.zeros(*base.shape, cells, dtype=torch.float64, device=lo.device)
    weights[..., 0] += n_lo
    weights[..., cells - 1] += n_hi
    if window > 0:
        k = n_lo[..., None] + torch.arange(window, device=lo.device, dtype=torch.float64)
        valid = (k < k_hi[..., None]).double()
        y = (base[..., None] + k * step[..., None]).clamp(0, cells - 1)
        y0 = torch.floor(y).clamp(max=cells - 1)
        ly = y - y0
        y1 = (y0 + 1).clamp(max=cells - 1)
        weights.scatter_add_(-1, y0.long(), (1 - ly) * valid)
        weights.scatter_add_(-1, y1.long(), ly * valid)
    return (weights / g64.clamp(min=1)[..., None]).float()


def _roi_align_clamped(maps: torch.Tensor, cells: torch.Tensor, size: int) -> torch.Tensor:
    """roi_align(maps, boxes in cells, (size, size), sampling_ratio=0, aligned=True) with
    border clamp instead of zeros outside: [B, C, size, size]."""
    _, _, h, w = maps.shape
    ay = _axis_weights(cells[:, 1], cells[:, 3], size, h)
    ax = _axis_weights(cells[:, 0], cells[:, 2], size, w)
    return torch.einsum("bph,bchw,bqw->bcpq", ay, maps, ax)


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
    _, _, h, w = maps.shape
    scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=maps.device)
    cells = boxes.to(maps.device, torch.float32) * scale  # in map cells: cell i spans [i, i+1)
    grid = _roi_align_clamped(maps, cells, size)
    whole = _roi_align_clamped(maps, cells, 1)
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
