"""The loader's placement of RandAugment and the finishing pass, resolved once into a value."""

from __future__ import annotations

import dataclasses

import pytest

from rmt_dist.data.placement import Placement


@pytest.mark.parametrize(
    "device,ra,order,on,want",
    [
        ("cuda", True, "crop_first", "auto", ("device", "device")),
        ("cpu", True, "crop_first", "auto", ("host", "host")),
        (
            "cpu",
            True,
            "crop_first",
            "device",
            ("device", "device"),
        ),  # RandAugment first, so torch finishes too
        ("cuda", True, "crop_first", "host", ("host", "device")),
        ("cuda", True, "tlt", "device", ("host", "device")),  # tlt: always on the whole image in the workers
        ("cpu", False, "crop_first", "device", ("none", "host")),
        ("cuda", False, "crop_first", "auto", ("none", "device")),
    ],
)
def test_resolve(device, ra, order, on, want):
    p = Placement.resolve(device, rand_augment=ra, augment_order=order, randaugment_on=on)
    assert (p.randaugment, p.finish) == want
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.finish = "host"
