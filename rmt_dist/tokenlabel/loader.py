"""Training batches with token-label targets: (images, (cls_target, dense_target)).

Wraps the data package's TrainLoader: for every batch it takes what the loader did to each
image (`with_meta=True`), gathers that sample's teacher score map from the store, moves it
the same way and RoI-aligns it to the student's token grid (targets.py). The map covers the
teacher's view of the image (`view.py`); every box is mapped into it.

- `data.augment_order: tlt` (the starred recipes, TokenLabeling's order): the map is flipped
  with the image and moved by RandAugment's Rotate, ShearX/Y and TranslateX/YRel with the
  image's sampled arguments (label_augment.py, after tlt/data/random_augment_label.py),
  then the crop box, drawn on the augmented image, is RoI-aligned. Exact, like the image.
- `data.augment_order: crop_first` (timm's order): crop and flip are exact; RandAugment runs
  on the crop and its geometric ops are NOT reflected in the targets (they would have to
  move the 7x7 grid itself). TokenLabeling never uses this order with token labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ..config import Config
from .label_augment import augment_maps
from .store import TokenLabelStore, TokenLabelStoreError
from .targets import crop_aligned_targets, mix_ground_truth
from .view import TeacherView, to_map_coords

MODEL_STRIDE = 32


class TokenLabelTrainLoader:
    def __init__(self, base: Any, cfg: Config, device: torch.device | str = "cpu"):
        tl = cfg.tokenlabel
        if tl.store is None:
            raise TokenLabelStoreError(
                "tokenlabel.store is not set; make a store with python -m rmt_dist.tokenlabel.generate"
            )
        grid = cfg.data.img_size // MODEL_STRIDE
        if tl.size != grid:
            raise TokenLabelStoreError(
                f"tokenlabel.size={tl.size} but the model's token grid at data.img_size={cfg.data.img_size} is "
                f"{grid}x{grid}; set tokenlabel.size={grid}"
            )
        self.base = base
        self.store = TokenLabelStore(tl.store, beton=cfg.data.train, num_classes=cfg.model.num_classes)
        self.num_classes = cfg.model.num_classes
        self.size = tl.size
        self.smoothing = tl.label_smoothing
        self.ground_truth = tl.ground_truth
        self.device = torch.device(device)
        self.view = TeacherView.from_dict(self.store.meta.view)

    @property
    def steps_per_epoch(self) -> int:
        return self.base.steps_per_epoch

    def __len__(self) -> int:
        return len(self.base)

    def targets(self, meta: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        scores, indices = self.store.gather(meta["indices"].numpy())
        flips = meta["flipped"]
        hw = meta["image_size"].double()  # (height, width)
        rects = self.view.rect(hw[:, 0].numpy(), hw[:, 1].numpy())
        if meta.get("augment_order") == "tlt":  # flip and RandAugment first, then the crop
            ra_ops, ra_args = meta.get("ra_ops"), meta.get("ra_args")
            scores, indices = augment_maps(
                scores,
                indices,
                flips.numpy(),
                None if ra_ops is None else ra_ops.numpy(),
                None if ra_args is None else ra_args.numpy(),
                hw[:, 0].numpy(),
                hw[:, 1].numpy(),
                rects,
            )
            flips = torch.zeros_like(flips)
        boxes = meta["boxes"].double()  # (top, left, height, width) in stored-image pixels
        frac = torch.stack(
            [
                boxes[:, 1] / hw[:, 1],
                boxes[:, 0] / hw[:, 0],
                (boxes[:, 1] + boxes[:, 3]) / hw[:, 1],
                (boxes[:, 0] + boxes[:, 2]) / hw[:, 0],
            ],
            1,
        )
        # Source-image fractions -> fractions of the region the teacher saw (identity for squash).
        frac = torch.from_numpy(to_map_coords(frac.numpy(), rects))
        cls, dense = crop_aligned_targets(
            torch.from_numpy(scores).to(self.device),
            torch.from_numpy(indices).to(self.device),
            frac.float(),
            flips,
            self.num_classes,
            self.size,
            self.smoothing,
        )
        if self.ground_truth:
            cls = mix_ground_truth(cls, meta["labels"].to(self.device), self.smoothing)
        return cls, dense

    def epoch(
        self, epoch: int, start_step: int = 0
    ) -> Iterator[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]]:
        for images, _soft, meta in self.base.epoch(epoch, start_step, with_meta=True):
            if meta.get("mix_box") is not None or float(meta.get("mix_lam", 1.0) or 1.0) != 1.0:
                raise TokenLabelStoreError(
                    "mixup/cutmix must be off with token labeling (set data.mixup=0 data.cutmix=0)"
                )
            yield images, self.targets(meta)

    def __getattr__(self, name: str) -> Any:  # everything else (indices, ...) is the base loader's
        return getattr(self.base, name)
