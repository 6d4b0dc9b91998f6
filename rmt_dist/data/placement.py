"""Where the train loader runs RandAugment and the finishing pass: resolved once per loader.

    randaugment  "none"    no RandAugment (data.auto_augment unset)
                 "host"    in the decode worker threads (crop_first on the crop, or tlt on
                           the whole stored image; always for augment_order=tlt)
                 "device"  with torch ops after the host->device copy (augment_order=crop_first,
                           data.randaugment_on=device, or auto on CUDA)
    finish       "host"    normalise + random erasing + mixup/cutmix in the worker threads, in
                           one pass (a CPU "device": the caller's thread would compete for the
                           same cores), unless RandAugment is left to the device (it comes first)
                 "device"  the same with torch on the device, after the copy

Either way the batches are bit-identical (tests/test_data_loader.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Placement:
    randaugment: Literal["none", "host", "device"]
    finish: Literal["host", "device"]

    @classmethod
    def resolve(
        cls,
        device_type: str,
        *,
        rand_augment: bool = False,
        augment_order: str = "crop_first",
        randaugment_on: str = "auto",
    ) -> Placement:
        ra: Literal["none", "host", "device"]
        if not rand_augment:
            ra = "none"
        elif augment_order == "crop_first" and (
            randaugment_on == "device" or (randaugment_on == "auto" and device_type == "cuda")
        ):
            ra = "device"
        else:
            ra = "host"
        finish: Literal["host", "device"] = "host" if device_type == "cpu" and ra != "device" else "device"
        return cls(ra, finish)

    @property
    def randaugment_on_device(self) -> bool:
        return self.randaugment == "device"

    @property
    def finish_on_host(self) -> bool:
        return self.finish == "host"
