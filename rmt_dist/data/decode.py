"""Batch decode of an FFCV beton's images with explicit crop boxes and flips.

FFCV's own decoders draw crop boxes from numba's per-thread RNG, which cannot be
replayed; here the boxes come from the caller (sampled from the batch's seed), and one
parallel numba kernel decodes (libffcv's libjpeg-turbo `imdecode`, or raw pixels),
crops, resizes (libffcv's OpenCV INTER_AREA `resize`) and flips each sample, without
the GIL. Sample bytes are read from a memory map of the beton (the OS page cache).
"""

from __future__ import annotations

import numpy as np
from ffcv.libffcv import imdecode, resize_crop
from ffcv.reader import Reader
from numba import get_thread_id, njit, prange

from .errors import DataError

_imdecode = njit(nogil=True)(imdecode)
_resize_crop = njit(nogil=True)(resize_crop)

JPEG, RAW = 0, 1  # ffcv.fields.rgb_image.IMAGE_MODES


class BetonImages:
    """Where each sample's image lies in a beton, and its label; arrays indexed by sample."""

    def __init__(self, path: str) -> None:
        try:
            reader = Reader(path)
        except (OSError, AssertionError, ValueError) as e:
            raise DataError(f"{path}: not a readable FFCV .beton ({e}); convert it with python -m rmt_dist.data.convert") from e
        names = reader.field_names
        if "image" not in names or "label" not in names:
            raise DataError(f"{path}: fields {names}, expected 'image' and 'label' (made by rmt_dist.data.convert)")
        self.path = path
        self.num_samples = int(reader.num_samples)
        # FFCV names the metadata columns f0, f1, ... in field order.
        image = reader.metadata[f"f{names.index('image')}"]
        self.labels = np.ascontiguousarray(reader.metadata[f"f{names.index('label')}"]).astype(np.int64)
        self.modes = np.ascontiguousarray(image["mode"]).astype(np.int64)
        self.heights = np.ascontiguousarray(image["height"]).astype(np.int64)
        self.widths = np.ascontiguousarray(image["width"]).astype(np.int64)
        self.ptrs = np.ascontiguousarray(image["data_ptr"]).astype(np.int64)
        table = reader.alloc_table
        order = np.argsort(table["ptr"])
        sorted_ptrs = table["ptr"][order].astype(np.int64)
        self.sizes = table["size"][order][np.searchsorted(sorted_ptrs, self.ptrs)].astype(np.int64)
        self.data = np.memmap(path, np.uint8, mode="r")
        self.max_pixels = int((self.heights * self.widths).max()) if self.num_samples else 0


@njit(nogil=True, parallel=True)
def _decode_batch(data, ptrs, sizes, modes, heights, widths, indices, boxes, flips, out, scratch):
    for k in prange(indices.shape[0]):
        s = indices[k]
        h = heights[s]
        w = widths[s]
        raw = data[ptrs[s]:ptrs[s] + sizes[s]]
        if modes[s] == 0:
            buf = scratch[get_thread_id(), :h * w * 3].reshape((h, w, 3))
            _imdecode(raw, buf, h, w, h, w, 0, 0, 1, 1, False, False)
        else:
            buf = raw.reshape((h, w, 3))
        top, left, bh, bw = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        dst = out[k]
        _resize_crop(buf, top, top + bh, left, left + bw, dst)
        if flips[k]:
            ow = dst.shape[1]
            for y in range(dst.shape[0]):
                for x in range(ow // 2):
                    for c in range(3):
                        t = dst[y, x, c]
                        dst[y, x, c] = dst[y, ow - 1 - x, c]
                        dst[y, ow - 1 - x, c] = t


class BatchDecoder:
    """Decodes batches of one beton into caller-provided (B, H, W, 3) uint8 arrays."""

    def __init__(self, images: BetonImages, num_threads: int) -> None:
        from numba import config

        self.images = images
        # get_thread_id() ranges over numba's whole pool, whatever set_num_threads says.
        self.scratch = np.empty((config.NUMBA_NUM_THREADS, max(images.max_pixels, 1) * 3), np.uint8)
        self.num_threads = num_threads

    def decode(self, indices: np.ndarray, boxes: np.ndarray, flips: np.ndarray, out: np.ndarray) -> None:
        im = self.images
        _decode_batch(im.data, im.ptrs, im.sizes, im.modes, im.heights, im.widths,
                      np.ascontiguousarray(indices, np.int64), np.ascontiguousarray(boxes, np.int64),
                      np.ascontiguousarray(flips, np.bool_), out, self.scratch)


@njit(nogil=True, parallel=True, cache=True)
def normalize_batch(images, out, mean, inv_std, channels_last):
    """uint8 (B, H, W, 3) -> float32 (x - mean) * inv_std into `out`: (B, 3, H, W), or
    (B, H, W, 3) memory (the channels_last layout) when `channels_last`."""
    b, h, w, _ = images.shape
    for k in prange(b):
        for y in range(h):
            for x in range(w):
                for c in range(3):
                    v = (np.float32(images[k, y, x, c]) - mean[c]) * inv_std[c]
                    if channels_last:
                        out[k, y, x, c] = v
                    else:
                        out[k, c, y, x] = v
