"""Batch decode of an FFCV beton's images with explicit crop boxes and flips.

FFCV's own decoders draw crop boxes from numba's per-thread RNG, which cannot be
replayed; here the boxes come from the caller (sampled from the batch's seed), and one
parallel numba kernel decodes (libffcv's libjpeg-turbo `imdecode`, or raw pixels),
crops, resizes (Pillow's bicubic/bilinear, bit-exact: `resample.py`), flips and
RandAugments (`randaugment.py`) each sample, without the GIL. One parallel loop for all of
it balances the threads better than one per stage (RandAugment ops differ 50x in cost).
Sample bytes are read from a memory map of the beton (the OS page cache).

`decode_whole` is tlt's order (`data.augment_order: tlt`): flip and RandAugment the whole
decoded image, then crop. Working back from the crop box, each op computes only the window
of its output that the crop (or the next op) reads (`randaugment.source_window`), bit-equal
inside the crop to computing the whole image: about half the pixels on average at timm's
scale (0.08, 1), and all of them only before a histogram/mean op (AutoContrast, Equalize,
Contrast).
"""

from __future__ import annotations

import numpy as np
from ffcv.libffcv import imdecode
from ffcv.reader import Reader
from numba import get_thread_id, njit, prange

from .errors import DataError
from .randaugment import NO_OP, apply_op, source_window
from .resample import BICUBIC, BILINEAR, FILTERS, resize_window

_imdecode = njit(nogil=True)(imdecode)

JPEG, RAW = 0, 1  # ffcv.fields.rgb_image.IMAGE_MODES


class BetonImages:
    """Where each sample's image lies in a beton, and its label; arrays indexed by sample."""

    def __init__(self, path: str) -> None:
        try:
            reader = Reader(path)
        except (OSError, AssertionError, ValueError) as e:
            raise DataError(
                f"{path}: not a readable FFCV .beton ({e}); convert it with python -m rmt_dist.data.convert"
            ) from e
        names = reader.field_names
        if "image" not in names or "label" not in names:
            raise DataError(
                f"{path}: fields {names}, expected 'image' and 'label' (made by rmt_dist.data.convert)"
            )
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
def _decode_batch(
    data,
    ptrs,
    sizes,
    modes,
    heights,
    widths,
    indices,
    boxes,
    resize,
    flips,
    out,
    scratch,
    kind,
    ra_ops,
    ra_args,
    fill,
):
    for k in prange(indices.shape[0]):
        s = indices[k]
        h = heights[s]
        w = widths[s]
        raw = data[ptrs[s] : ptrs[s] + sizes[s]]
        if modes[s] == 0:
            buf = scratch[get_thread_id(), : h * w * 3].reshape((h, w, 3))
            _imdecode(raw, buf, h, w, h, w, 0, 0, 1, 1, False, False)
        else:
            buf = raw.reshape((h, w, 3))
        resize_window(
            buf,
            boxes[k, 0],
            boxes[k, 1],
            boxes[k, 2],
            boxes[k, 3],
            resize[k, 0],
            resize[k, 1],
            resize[k, 2],
            resize[k, 3],
            out[k],
            flips[k],
            kind,
        )
        for layer in range(ra_ops.shape[1]):
            if ra_ops[k, layer] != NO_OP:
                apply_op(out[k], ra_ops[k, layer], ra_args[k, layer], fill, kind == BICUBIC)


@njit(nogil=True, parallel=True)
def _decode_batch_whole(
    data,
    ptrs,
    sizes,
    modes,
    heights,
    widths,
    indices,
    boxes,
    flips,
    kinds,
    out,
    scratch,
    ra_ops,
    ra_args,
    ra_bicubic,
    fill,
):
    """tlt's order: flip the whole decoded image, RandAugment it at its stored size, then crop
    and resize (each sample with its own crop filter, each op with its own affine filter)."""
    for k in prange(indices.shape[0]):
        s = indices[k]
        h = heights[s]
        w = widths[s]
        raw = data[ptrs[s] : ptrs[s] + sizes[s]]
        buf = scratch[get_thread_id(), : h * w * 3].reshape((h, w, 3))
        if modes[s] == 0:
            _imdecode(raw, buf, h, w, h, w, 0, 0, 1, 1, False, False)
        else:
            buf[:] = raw.reshape((h, w, 3))  # a copy: RandAugment works in place
        # Only what the crop will show: from the crop box back through the ops, the window of
        # its input each op must compute (randaugment.source_window).
        layers = ra_ops.shape[1]
        win = np.empty((layers + 1, 4), np.int64)
        win[layers, 0], win[layers, 1] = boxes[k, 0], boxes[k, 0] + boxes[k, 2]
        win[layers, 2], win[layers, 3] = boxes[k, 1], boxes[k, 1] + boxes[k, 3]
        for layer in range(layers - 1, -1, -1):
            op = ra_ops[k, layer]
            if op == NO_OP:
                win[layer] = win[layer + 1]
            else:
                win[layer, 0], win[layer, 1], win[layer, 2], win[layer, 3] = source_window(
                    op,
                    ra_args[k, layer],
                    h,
                    w,
                    win[layer + 1, 0],
                    win[layer + 1, 1],
                    win[layer + 1, 2],
                    win[layer + 1, 3],
                )
        if flips[k]:  # whole rows: the window's columns come from the mirrored ones
            for y in range(win[0, 0], win[0, 1]):
                row = buf[y]
                for x in range(w // 2):
                    for c in range(3):
                        t = row[x, c]
                        row[x, c] = row[w - 1 - x, c]
                        row[w - 1 - x, c] = t
        for layer in range(layers):
            if ra_ops[k, layer] != NO_OP:
                apply_op(
                    buf,
                    ra_ops[k, layer],
                    ra_args[k, layer],
                    fill,
                    ra_bicubic[k, layer],
                    win[layer + 1, 0],
                    win[layer + 1, 1],
                    win[layer + 1, 2],
                    win[layer + 1, 3],
                )
        oh, ow = out.shape[1], out.shape[2]
        resize_window(
            buf, boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3], oh, ow, 0, 0, out[k], False, kinds[k]
        )


class BatchDecoder:
    """Decodes batches of one beton into caller-provided (B, H, W, 3) uint8 arrays.

    `decode(indices, boxes, flips, out)`: crop each box (top, left, h, w) and resize it to
    the output size (timm's RandomResizedCrop). `resize` (B, 4) instead resizes the box to
    (full_h, full_w) and keeps the window at (win_top, win_left) (timm's eval Resize +
    CenterCrop, see `sampling.center_crop_boxes`).
    """

    def __init__(self, images: BetonImages, num_threads: int, interpolation: str = "bicubic") -> None:
        from numba import config

        if interpolation == "random":  # drawn per crop (decode_whole); the eval resize uses bicubic
            interpolation = "bicubic"
        if interpolation not in FILTERS:
            raise DataError(f"interpolation {interpolation!r}: expected one of {sorted(FILTERS)}")
        self.kind = FILTERS[interpolation]
        self.images = images
        # get_thread_id() ranges over numba's whole pool, whatever set_num_threads says.
        self.scratch = np.empty((config.NUMBA_NUM_THREADS, max(images.max_pixels, 1) * 3), np.uint8)  # type: ignore[attr-defined]  # numba sets its config at run time
        self.num_threads = num_threads

    def decode(
        self,
        indices: np.ndarray,
        boxes: np.ndarray,
        flips: np.ndarray,
        out: np.ndarray,
        resize: np.ndarray | None = None,
        rand_augment: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """`rand_augment`: (ops, args) from `randaugment.sample_ops` and the fill colour."""
        im = self.images
        if rand_augment is None:
            rand_augment = (
                np.zeros((len(indices), 0), np.int64),
                np.zeros((len(indices), 0)),
                np.zeros(3, np.uint8),
            )
        ops, args, fill = rand_augment
        if resize is None:
            resize = np.zeros((len(indices), 4), np.int64)
            resize[:, 0], resize[:, 1] = out.shape[1], out.shape[2]
        _decode_batch(
            im.data,
            im.ptrs,
            im.sizes,
            im.modes,
            im.heights,
            im.widths,
            np.ascontiguousarray(indices, np.int64),
            np.ascontiguousarray(boxes, np.int64),
            np.ascontiguousarray(resize, np.int64),
            np.ascontiguousarray(flips, np.bool_),
            out,
            self.scratch,
            self.kind,
            np.ascontiguousarray(ops, np.int64),
            np.ascontiguousarray(args, np.float64),
            np.ascontiguousarray(fill, np.uint8),
        )

    def decode_whole(
        self,
        indices: np.ndarray,
        boxes: np.ndarray,
        flips: np.ndarray,
        out: np.ndarray,
        crop_bicubic: np.ndarray,
        rand_augment: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None,
    ) -> None:
        """tlt's order (`data.augment_order: tlt`): flip, RandAugment on the whole stored image,
        then crop `boxes` (drawn on that image) and resize. `crop_bicubic` (B,) picks each crop's
        filter; `rand_augment`: (ops, args, bicubic (B, layers) per affine op, fill colour)."""
        im = self.images
        n = len(indices)
        if rand_augment is None:
            rand_augment = (
                np.zeros((n, 0), np.int64),
                np.zeros((n, 0)),
                np.zeros((n, 0), np.bool_),
                np.zeros(3, np.uint8),
            )
        ops, args, bicubic, fill = rand_augment
        kinds = np.where(np.asarray(crop_bicubic, np.bool_), BICUBIC, BILINEAR).astype(np.int64)
        _decode_batch_whole(
            im.data,
            im.ptrs,
            im.sizes,
            im.modes,
            im.heights,
            im.widths,
            np.ascontiguousarray(indices, np.int64),
            np.ascontiguousarray(boxes, np.int64),
            np.ascontiguousarray(flips, np.bool_),
            kinds,
            out,
            self.scratch,
            np.ascontiguousarray(ops, np.int64),
            np.ascontiguousarray(args, np.float64),
            np.ascontiguousarray(bicubic, np.bool_),
            np.ascontiguousarray(fill, np.uint8),
        )
