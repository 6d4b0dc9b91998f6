"""An FFCV decoder that resizes the WHOLE image (no crop) to a fixed size.

The teacher's score map must cover the whole source image, because the student's
random crops are later expressed as fractions of the source image's width and height.
"""

from __future__ import annotations

from ffcv.fields.rgb_image import ResizedCropRGBImageDecoder
from numba import njit


@njit(cache=False)
def _whole_image(height, width, _scale, _ratio):
    return 0, 0, height, width


class WholeImageRGBDecoder(ResizedCropRGBImageDecoder):
    """Decode and resize the full image to `output_size` (h, w), squashing the aspect ratio."""

    def __init__(self, output_size: tuple[int, int]):
        super().__init__(output_size)
        self.scale = None
        self.ratio = None

    @property
    def get_crop_generator(self):
        return _whole_image
