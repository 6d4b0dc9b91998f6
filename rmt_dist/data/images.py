"""Decode one source image to RGB uint8, or say in a few words why it cannot be used.

Real ImageNet holds CMYK JPEGs, greyscale JPEGs and PNGs named .JPEG: Pillow identifies
files by content, and every mode is converted to RGB. Truncated, empty and undecodable
files raise `BadImage` with a short reason recorded in the meta file.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

# Never silently pad a truncated JPEG with grey: such a file is reported and skipped.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class BadImage(Exception):
    """The file cannot become a training image; str(e) is the reason."""


def load_rgb(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of the image at `path`."""
    try:
        if os.path.getsize(path) == 0:
            raise BadImage("empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()  # decodes fully: raises on truncated data
                rgb = img if img.mode == "RGB" else img.convert("RGB")
                pixels = np.asarray(rgb, dtype=np.uint8)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not a decodable image") from None
    except OSError as e:
        msg = str(e).lower()
        reason = "truncated image" if "truncated" in msg or "premature" in msg else f"decode error: {e}"
        raise BadImage(reason) from None
    except Exception as e:  # Pillow raises many types for corrupt data (SyntaxError, ValueError, ...)
        raise BadImage(f"decode error: {type(e).__name__}: {e}") from None
    if pixels.ndim != 3 or pixels.shape[2] != 3 or min(pixels.shape[:2]) == 0:
        raise BadImage(f"unexpected pixel shape {pixels.shape}")
    return np.ascontiguousarray(pixels)
