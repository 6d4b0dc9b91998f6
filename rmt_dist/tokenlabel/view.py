"""Which region of each source image a teacher's score map covers (the teacher's view).

A token-label store records its view in `meta.json` (`StoreMeta.view`):

    {"kind": "squash"}                     the whole image resized to the teacher's square
                                           input (our generator's original behaviour)
    {"kind": "center_crop", "crop_pct": p}  timm's eval transform at the teacher's size S:
                                           short side resized to S / p, centre S x S crop,
                                           so the map covers the centred square of side
                                           p x short side (TokenLabeling's published
                                           NFNet-F6 maps: S = 576, p = 1.0)

`rect` gives that region as fractions of the source image's width and height, and
`to_map_coords` maps boxes given in source-image fractions into map fractions, where
(0, 0, 1, 1) is the whole map. Parts of a crop outside the view have no teacher
prediction; the targets take the nearest view cell there (border clamp, targets.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import BadInputError

ViewKind = Literal["squash", "center_crop"]
VIEW_KINDS: tuple[str, ...] = ("squash", "center_crop")


class TeacherViewError(BadInputError, ValueError):
    """A view description that is not one of the documented kinds."""


@dataclass(frozen=True)
class TeacherView:
    kind: ViewKind = "squash"
    crop_pct: float = 1.0  # center_crop only: the centred square's side as a fraction of the short side

    def __post_init__(self) -> None:
        if self.kind not in VIEW_KINDS:
            raise TeacherViewError(f"teacher view kind {self.kind!r} is not one of {', '.join(VIEW_KINDS)}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise TeacherViewError(f"teacher view crop_pct={self.crop_pct} must be in (0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return (
            {"kind": self.kind} if self.kind == "squash" else {"kind": self.kind, "crop_pct": self.crop_pct}
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TeacherView:
        """None (stores written before views were recorded) means squash: all they could be."""
        if d is None:
            return cls()
        return cls(kind=d.get("kind", "squash"), crop_pct=float(d.get("crop_pct", 1.0)))

    def describe(self) -> str:
        if self.kind == "squash":
            return "whole image, squashed to the teacher's square"
        return f"short side x {self.crop_pct:g}, centre square"

    def rect(self, heights: np.ndarray, widths: np.ndarray) -> np.ndarray:
        """[B, 4] float64 (x0, y0, x1, y1) covered by the map, in fractions of each image's width/height."""
        h = np.asarray(heights, dtype=np.float64)
        w = np.asarray(widths, dtype=np.float64)
        out = np.empty(h.shape + (4,), dtype=np.float64)
        if self.kind == "squash":
            out[...] = (0.0, 0.0, 1.0, 1.0)
            return out
        side = self.crop_pct * np.minimum(h, w)
        fx, fy = side / w, side / h
        out[..., 0], out[..., 1] = (1 - fx) / 2, (1 - fy) / 2
        out[..., 2], out[..., 3] = (1 + fx) / 2, (1 + fy) / 2
        return out


def to_map_coords(boxes: np.ndarray, rects: np.ndarray) -> np.ndarray:
    """Boxes [B, 4] (x1, y1, x2, y2) in source-image fractions -> fractions of the map covering `rects`."""
    boxes = np.asarray(boxes, dtype=np.float64)
    rects = np.asarray(rects, dtype=np.float64)
    x0, y0, x1, y1 = (rects[..., i] for i in range(4))
    sx, sy = x1 - x0, y1 - y0
    return np.stack(
        [
            (boxes[..., 0] - x0) / sx,
            (boxes[..., 1] - y0) / sy,
            (boxes[..., 2] - x0) / sx,
            (boxes[..., 3] - y0) / sy,
        ],
        axis=-1,
    )
