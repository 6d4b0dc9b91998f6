"""Training and evaluation loaders over FFCV betons, built from a Config.

    train = build_train_loader(cfg, rank=r, world_size=w, device=device)
    train.steps_per_epoch                     # optimizer-step batches per epoch per rank
    for images, targets in train.epoch(epoch, start_step=0): ...
    for images, targets, meta in train.epoch(epoch, with_meta=True): ...
    for plan, buffer in train.host_stage(epoch): train.device_stage(epoch, plan, buffer)  # = epoch()
    ev = build_eval_loader(cfg, rank=r, world_size=w, device=device)
    for images, labels in ev: ...

Train batches: `images` float32 (B, 3, H, W) normalised on `device` (channels_last memory
format if cfg.model.channels_last); `targets` float32 (B, num_classes) soft targets
(label smoothing, and mixup/cutmix when enabled) for one soft-target cross entropy.
Eval batches: `labels` int64 (B,); across ranks every val sample exactly once (contiguous
blocks, no padding), the last batch may be short.

Pipeline per batch (`data.augment_order: crop_first`, timm's order): decode (libffcv's
libjpeg-turbo) + RandomResizedCrop with Pillow's bicubic resize, bit-exact (`resample.py`)
+ flip (one numba kernel, `decode.py`) -> copy uint8 NHWC to the device -> normalise -> random erasing -> mixup/cutmix
(`device_augment.py`). RandAugment acts on the uint8 crops, either in the decode kernel
(numba, `randaugment.py`) or batched on the device right after the copy
(`device_randaugment.py`), bit-identically; `data.randaugment_on: auto` picks the device
on CUDA (it costs the host about one more decode per image) and the workers on CPU. On a
CPU device the workers also normalise, erase and mix, in one pass (`host_finish.py`).
Eval: timm's Resize(img_size / crop_pct) + CenterCrop, bit-exact. A background thread
prepares `batches_ahead` batches while the caller trains; numba's threads
(cfg.data.num_workers, capped by the CPUs this process may use) do the per-sample work
without the GIL.

Reproducibility: the sample order depends only on (seed, epoch) (`sampling.py`); every
random choice for a batch (crop boxes, flips, RandAugment ops and magnitudes, erasing
boxes and values, mixup lambda and box) comes from RNGs seeded by (seed, epoch, rank,
world_size, step). `epoch(e, start_step=k)` therefore yields exactly batches k, k+1, ...
of `epoch(e)`, without decoding the skipped ones.

Token labeling (`with_meta=True`) adds a dict per batch, all CPU tensors:
  indices   int64 (B,)    sample indices into the beton (and its token-label store)
  labels    int64 (B,)    hard labels
  boxes     int64 (B, 4)  RandomResizedCrop box (top, left, height, width) in the pixels
                          of the image as stored in the beton
  image_size int64 (B, 2) that image's (height, width)
  flipped   bool (B,)     horizontal flip (crop_first: after the crop; tlt: of the whole image, first)
  mix_lam, mix_box        mixup/cutmix lambda and (y_lo, y_hi, x_lo, x_hi) or None
  augment_order           cfg.data.augment_order
  tlt order only: ra_ops, ra_args (B, layers) RandAugment op codes (NO_OP if skipped) and
  arguments, ra_bicubic (B, layers) and crop_bicubic (B,) the filter drawn per op and crop.

`data.augment_order: tlt` (the starred recipes) is TokenLabeling's order
(`transforms_imagenet_train`, tlt/data/label_transforms_factory.py): flip -> RandAugment on
the whole image as stored in the beton -> RandomResizedCrop, its box drawn on the augmented
image (same size). With `data.interpolation: random` each affine op and each crop draws
bilinear or bicubic (tlt's `_RANDOM_INTERPOLATION`). RandAugment then runs in the decode
workers, on images up to the beton's max resolution (`decode.decode_whole`).
Token labels: crop then flip (crop_first) maps a dense label map exactly, but RandAugment's
geometric ops on the crop are not reflected in it. In the tlt order the token-label loader
moves the map with the flip and the geometric ops, as tlt does with its label ops
(tlt/data/random_augment_label.py `NAME_TO_LABELOP`; rmt_dist/tokenlabel/label_augment.py).

FFCV's own Loader is not used: its numba augmentations draw from per-thread RNGs that
cannot be replayed, and it cannot start mid-epoch. We keep FFCV's file format, reader,
and its decode/resize kernels. No FFCV process cache (the removed `data.os_cache`): samples
are always read through a memory map (the OS page cache); FFCV's process cache only pays with its
quasi-random order, which would break the exact-order contract.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import torch

from ..config import Config
from .decode import BatchDecoder, BetonImages
from .device_augment import (
    ErasingSpec,
    MixParams,
    MixSpec,
    apply_erasing,
    apply_mix,
    sample_erasing,
    sample_mix,
    soft_targets,
)
from .device_randaugment import rand_augment_on_device
from .errors import DataError
from .host_finish import erasing_table, finish_on_host
from .meta import meta_path, read_meta
from .placement import Placement
from .prefetch import FloatPool, Prefetcher
from .randaugment import RandAugmentSpec, fill_color, sample_ops
from .sampling import center_crop_boxes, eval_indices, random_resized_crop_boxes, train_indices

BATCHES_AHEAD = 3
# Numba's parallel kernels must not be launched from two threads at once (the workqueue
# threading layer aborts); train and eval producers may overlap, so launches take turns.
_KERNEL_LOCK = threading.Lock()


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def worker_threads(requested: int) -> int:
    """cfg.data.num_workers capped by the CPUs this process may use (SLURM/cgroup affinity)
    and by numba's pool size."""
    return max(1, min(requested, usable_cpus(), numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]  # numba sets its config at run time


def _open_beton(path: str | None, key: str) -> BetonImages:
    if not path:
        raise DataError(f"{key} is not set (path to a .beton made by python -m rmt_dist.data.convert)")
    if not os.path.isfile(path):
        raise DataError(
            f"{key}: {path} does not exist (convert it with python -m rmt_dist.data.convert, "
            "or for the demo: python -m rmt_dist.data.digits data/digits)"
        )
    return BetonImages(path)


def _check_classes(images: BetonImages, num_classes: int, key: str) -> None:
    if images.num_samples and int(images.labels.max()) >= num_classes:
        raise DataError(
            f"{key}: {images.path} has labels up to {int(images.labels.max())} but "
            f"model.num_classes is {num_classes}; set model.num_classes to at least {int(images.labels.max()) + 1}"
        )
    if meta_path(images.path).exists():
        n = len(read_meta(images.path).get("classes", {}))
        if n > num_classes:
            raise DataError(f"{key}: {images.path} has {n} classes but model.num_classes is {num_classes}")


@dataclass
class _Batch:
    step: int
    indices: np.ndarray
    boxes: np.ndarray
    flips: np.ndarray
    resize: np.ndarray | None = None  # eval: (full_h, full_w, win_top, win_left) per sample
    ra_ops: np.ndarray | None = None  # (B, layers) RandAugment op codes, NO_OP when skipped
    ra_args: np.ndarray | None = None
    whole: bool = False  # tlt order: flip, RandAugment on the whole image, then crop (decode_whole)
    ra_bicubic: np.ndarray | None = None  # tlt order: (B, layers) affine filter per op
    crop_bicubic: np.ndarray | None = None  # tlt order: (B,) crop filter per sample
    erase_boxes: list | None = None  # random erasing: per image None or (top, left, h, w)
    erase_table: np.ndarray | None = None  # CPU device: boxes + drawn noise for host_finish
    erase_noise: np.ndarray | None = None
    mix: MixParams = MixParams()
    normalized: torch.Tensor | None = None  # CPU device: float32 batch made by the workers

    @property
    def size(self) -> int:
        return len(self.indices)


class _Base:
    def __init__(
        self,
        images: BetonImages,
        *,
        batch_size: int,
        img_size: int,
        workers: int,
        device: torch.device,
        mean: Sequence[float],
        std: Sequence[float],
        channels_last: bool,
        interpolation: str,
        placement: Placement,
    ) -> None:
        self.images = images
        self.batch_size = batch_size
        self.img_size = img_size
        self.device = device
        self.workers = workers
        self.channels_last = channels_last
        self.decoder = BatchDecoder(images, workers, interpolation)
        self.bicubic = interpolation == "bicubic"
        self.placement = placement  # where RandAugment and the finishing pass run (placement.py)
        pin = device.type == "cuda"
        self.buffers = [
            torch.empty((batch_size, img_size, img_size, 3), dtype=torch.uint8, pin_memory=pin)
            for _ in range(BATCHES_AHEAD + 2)
        ]
        self.prefetcher = Prefetcher(self.buffers, device)
        self.float_pool = FloatPool(BATCHES_AHEAD + 4)
        self.fill = fill_color(mean)  # RandAugment's affine fill: timm's img_mean
        self.mean_np = np.array([m * 255 for m in mean], np.float32)
        self.inv_std_np = np.array([1 / (s * 255) for s in std], np.float32)
        self.mean = torch.from_numpy(self.mean_np).to(device).view(1, 3, 1, 1)
        self.inv_std = torch.from_numpy(self.inv_std_np).to(device).view(1, 3, 1, 1)

    def _decode(self, slot: int, batch: _Batch) -> _Batch:
        out = self.buffers[slot].numpy()[: batch.size]
        with _KERNEL_LOCK:
            numba.set_num_threads(self.workers)  # thread-local in numba: set on the launching thread
            if batch.whole:
                assert batch.crop_bicubic is not None  # sampled with every tlt-order batch
                whole_ra = None
                if batch.ra_ops is not None:
                    assert batch.ra_args is not None and batch.ra_bicubic is not None  # sampled with ra_ops
                    whole_ra = (batch.ra_ops, batch.ra_args, batch.ra_bicubic, self.fill)
                self.decoder.decode_whole(
                    batch.indices, batch.boxes, batch.flips, out, batch.crop_bicubic, whole_ra
                )
            else:
                ra = None
                if batch.ra_ops is not None and not self.placement.randaugment_on_device:
                    assert batch.ra_args is not None  # sampled with ra_ops
                    ra = (batch.ra_ops, batch.ra_args, self.fill)
                self.decoder.decode(batch.indices, batch.boxes, batch.flips, out, batch.resize, ra)
            if self.placement.finish_on_host:
                n = batch.size
                shape = (
                    (n, self.img_size, self.img_size, 3)
                    if self.channels_last
                    else (n, 3, self.img_size, self.img_size)
                )
                batch.normalized = self.float_pool.get(shape)
                finish_on_host(
                    out,
                    batch.normalized.numpy(),
                    self.mean_np,
                    self.inv_std_np,
                    self.channels_last,
                    batch.erase_table,
                    batch.erase_noise,
                    batch.mix,
                )
        return batch

    def _to_device(self, buffer: torch.Tensor, batch: _Batch) -> torch.Tensor:
        """uint8 NHWC (host) -> normalised float32 NCHW on the device. NHWC permuted is
        channels_last already; the copy moves 1 byte per value instead of 4."""
        if batch.normalized is not None:  # CPU device: done by the workers
            x = batch.normalized
            return x.permute(0, 3, 1, 2) if self.channels_last else x
        x = buffer[: batch.size].to(self.device, non_blocking=True)
        if self.placement.randaugment_on_device and batch.ra_ops is not None:
            assert batch.ra_args is not None  # sampled with ra_ops
            x = rand_augment_on_device(x, batch.ra_ops, batch.ra_args, self.fill, self.bicubic)
        x = (x.permute(0, 3, 1, 2).float() - self.mean) * self.inv_std
        return x if self.channels_last else x.contiguous()


class TrainLoader(_Base):
    """See the module docstring."""

    def __init__(
        self, images: BetonImages, cfg: Config, rank: int, world_size: int, device: torch.device
    ) -> None:
        d = cfg.data
        placement = Placement.resolve(
            device.type,
            rand_augment=bool(d.auto_augment),
            augment_order=d.augment_order,
            randaugment_on=d.randaugment_on,
        )
        super().__init__(
            images,
            batch_size=d.batch_size,
            img_size=d.img_size,
            workers=worker_threads(d.num_workers),
            device=device,
            mean=d.mean,
            std=d.std,
            channels_last=cfg.model.channels_last,
            interpolation=d.interpolation,
            placement=placement,
        )
        self.seed, self.rank, self.world_size = cfg.run.seed, rank, world_size
        self.num_classes = cfg.model.num_classes
        self.scale = (float(d.scale[0]), float(d.scale[1]))
        self.ratio = (float(d.ratio[0]), float(d.ratio[1]))
        self.hflip = d.hflip
        self.repeated_aug, self.num_repeats = d.repeated_aug, d.num_repeats
        self.drop_last = d.drop_last
        self.rand_augment = RandAugmentSpec.parse(d.auto_augment) if d.auto_augment else None
        self.augment_order = d.augment_order
        self.random_interpolation = d.interpolation == "random"
        if d.interpolation == "random" and d.augment_order != "tlt":
            raise DataError("data.interpolation=random needs data.augment_order=tlt")
        self.erasing = ErasingSpec(probability=d.reprob, mode=d.remode) if d.reprob > 0 else None
        self.mix = MixSpec(
            mixup_alpha=d.mixup,
            cutmix_alpha=d.cutmix,
            prob=d.mixup_prob,
            switch_prob=d.mixup_switch_prob,
            label_smoothing=d.label_smoothing,
        )
        self.label_smoothing = d.label_smoothing
        self.samples_per_rank = images.num_samples // world_size
        full, rest = divmod(self.samples_per_rank, d.batch_size)
        self.steps_per_epoch = full if (d.drop_last or rest == 0) else full + 1
        if self.steps_per_epoch == 0:
            raise DataError(
                f"data.train: {images.path} has {images.num_samples} samples, fewer than one batch per rank "
                f"(data.batch_size {d.batch_size} x {world_size} ranks); lower data.batch_size"
            )
        if self.mix.active and d.batch_size % 2:
            raise DataError(
                f"data.batch_size {d.batch_size}: mixup/cutmix pairs each image with the reversed batch "
                "and needs an even batch size"
            )

    def __len__(self) -> int:
        return self.steps_per_epoch

    def describe(self) -> str:
        """One line for the run log: sizes, threads, and where the augmentations run."""
        if self.rand_augment is None:
            ra = "off"
        elif self.augment_order == "tlt":
            ra = "on the whole image in the workers (augment_order tlt)"
        else:
            ra = f"{'on the device' if self.placement.randaugment_on_device else 'in the workers'} ({self.device.type})"
        finish = "in the workers" if self.placement.finish_on_host else f"on the device ({self.device.type})"
        return (
            f"{self.images.path}: {self.images.num_samples} samples, batch {self.batch_size} per rank, "
            f"{self.steps_per_epoch} steps/epoch, decode threads {self.workers} "
            f"(data.num_workers capped by the {usable_cpus()} CPUs this process may use), RandAugment {ra}, "
            f"finishing pass (normalise, erase, mix) {finish}"
        )

    def indices(self, epoch: int) -> np.ndarray:
        """This rank's sample order for `epoch` (before cutting into batches)."""
        return train_indices(
            self.images.num_samples,
            seed=self.seed,
            epoch=epoch,
            rank=self.rank,
            world_size=self.world_size,
            repeated_aug=self.repeated_aug,
            num_repeats=self.num_repeats,
        )

    def _seeds(self, epoch: int, step: int) -> list[np.random.SeedSequence]:
        key = [self.seed, epoch, self.rank, self.world_size, step]
        return np.random.SeedSequence(key).spawn(4)  # host aug, erasing, mixup, device noise

    def _filters(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """Bicubic (True) or bilinear per entry: tlt's random.choice((BILINEAR, BICUBIC)) when random."""
        if self.random_interpolation:
            return rng.random(shape) < 0.5
        return np.full(shape, self.bicubic)

    def _plan(self, epoch: int, step: int, order: np.ndarray) -> _Batch:
        idx = order[step * self.batch_size : (step + 1) * self.batch_size]
        seeds = self._seeds(epoch, step)
        rng = np.random.default_rng(seeds[0])
        im = self.images
        if self.augment_order == "tlt":
            # tlt's order of draws: flip, RandAugment (op, level, sign, filter), then the crop
            # box on the augmented image (same size as stored).
            flips = rng.random(len(idx)) < self.hflip
            batch = _Batch(
                step=step, indices=idx, boxes=np.zeros((len(idx), 4), np.int64), flips=flips, whole=True
            )
            if self.rand_augment is not None:
                batch.ra_ops, batch.ra_args = sample_ops(rng, len(idx), self.rand_augment)
                batch.ra_bicubic = self._filters(rng, batch.ra_ops.shape)
            batch.boxes = random_resized_crop_boxes(
                rng, im.heights[idx], im.widths[idx], self.scale, self.ratio
            )
            batch.crop_bicubic = self._filters(rng, (len(idx),))
        else:
            boxes = random_resized_crop_boxes(rng, im.heights[idx], im.widths[idx], self.scale, self.ratio)
            flips = rng.random(len(idx)) < self.hflip
            batch = _Batch(step=step, indices=idx, boxes=boxes, flips=flips)
            if self.rand_augment is not None:
                batch.ra_ops, batch.ra_args = sample_ops(rng, len(idx), self.rand_augment)
        if self.erasing is not None:
            batch.erase_boxes = sample_erasing(
                random.Random(int(seeds[1].generate_state(1, np.uint64)[0])),
                len(idx),
                self.img_size,
                self.img_size,
                self.erasing,
            )
            if self.placement.finish_on_host:
                batch.erase_table, batch.erase_noise = erasing_table(
                    batch.erase_boxes, self.erasing.mode, len(idx), self._noise_generator(seeds)
                )
        if self.mix.active:
            batch.mix = sample_mix(
                np.random.RandomState(seeds[2].generate_state(4)), self.mix, self.img_size, self.img_size
            )
        return batch

    def _noise_generator(self, seeds: list[np.random.SeedSequence]) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(seeds[3].generate_state(1, np.uint64)[0] >> np.uint64(1)))
        return gen

    def host_stage(self, epoch: int, start_step: int = 0) -> Iterator[tuple[_Batch, torch.Tensor]]:
        """The host's share of each batch, prepared ahead on the background thread: the plan
        and the uint8 NHWC buffer (decoded, cropped, flipped, and RandAugmented unless that
        is left to the device). `epoch` finishes each with `device_stage`; bench/loader.py
        times the two apart, to show what the CPUs of a GPU node must sustain."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise DataError(
                f"start_step {start_step}: must be in [0, {self.steps_per_epoch}] (steps_per_epoch)"
            )
        order = self.indices(epoch)

        def fill(slot: int, step: int) -> _Batch:
            return self._decode(slot, self._plan(epoch, step, order))

        return self.prefetcher.run(range(start_step, self.steps_per_epoch), fill)

    def device_stage(
        self, epoch: int, batch: _Batch, buffer: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Finish one `host_stage` batch on the device: (images, soft targets)."""
        images = self._to_device(buffer, batch)
        labels = torch.from_numpy(self.images.labels[batch.indices]).to(self.device, non_blocking=True)
        if batch.normalized is None:  # on the device; on CPU the workers did it (host_finish)
            if batch.erase_boxes is not None:
                assert self.erasing is not None  # boxes are drawn only when erasing is on
                apply_erasing(
                    images,
                    batch.erase_boxes,
                    self.erasing.mode,
                    self._noise_generator(self._seeds(epoch, batch.step)),
                )
            images = apply_mix(images, batch.mix)
        return images, soft_targets(labels, self.num_classes, self.label_smoothing, batch.mix.lam)

    def epoch(self, epoch: int, start_step: int = 0, with_meta: bool = False) -> Iterator[tuple[Any, ...]]:
        for batch, buffer in self.host_stage(epoch, start_step):
            images, targets = self.device_stage(epoch, batch, buffer)
            mix = batch.mix
            if not with_meta:
                yield images, targets
                continue
            im = self.images
            meta = {
                "indices": torch.from_numpy(batch.indices.copy()),
                "labels": torch.from_numpy(im.labels[batch.indices]),
                "boxes": torch.from_numpy(batch.boxes),
                "image_size": torch.from_numpy(
                    np.stack([im.heights[batch.indices], im.widths[batch.indices]], 1)
                ),
                "flipped": torch.from_numpy(batch.flips),
                "mix_lam": mix.lam,
                "mix_box": mix.box,
                "augment_order": self.augment_order,
            }
            if batch.whole:
                meta["crop_bicubic"] = torch.from_numpy(batch.crop_bicubic)
                if batch.ra_ops is not None:
                    meta["ra_ops"] = torch.from_numpy(batch.ra_ops)
                    meta["ra_args"] = torch.from_numpy(batch.ra_args)
                    meta["ra_bicubic"] = torch.from_numpy(batch.ra_bicubic)
            yield images, targets, meta


class EvalLoader(_Base):
    """See the module docstring. Iterating twice gives the same batches."""

    def __init__(
        self, images: BetonImages, cfg: Config, rank: int, world_size: int, device: torch.device
    ) -> None:
        d = cfg.data
        super().__init__(
            images,
            batch_size=d.eval_batch_size or 2 * d.batch_size,
            img_size=d.img_size,
            workers=worker_threads(d.num_workers),
            device=device,
            mean=d.mean,
            std=d.std,
            channels_last=cfg.model.channels_last,
            interpolation=d.interpolation,
            placement=Placement.resolve(device.type),
        )
        self.crop_pct = d.crop_pct
        self.order = eval_indices(images.num_samples, rank, world_size)
        center_crop_boxes(
            images.heights[:1], images.widths[:1], self.img_size, self.crop_pct
        )  # validates crop_pct now

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    @property
    def num_samples(self) -> int:
        """Samples this rank evaluates."""
        return len(self.order)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        im = self.images
        plans = []
        for step in range(len(self)):
            idx = self.order[step * self.batch_size : (step + 1) * self.batch_size]
            boxes, resize = center_crop_boxes(im.heights[idx], im.widths[idx], self.img_size, self.crop_pct)
            plans.append(_Batch(step, idx, boxes, np.zeros(len(idx), np.bool_), resize=resize))
        for batch, buffer in self.prefetcher.run(plans, self._decode):
            images = self._to_device(buffer, batch)
            yield images, torch.from_numpy(im.labels[batch.indices]).to(self.device, non_blocking=True)


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"rank {rank} / world_size {world_size}: need 0 <= rank < world_size")


def build_train_loader(
    cfg: Config, *, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu"
) -> TrainLoader:
    _check_rank(rank, world_size)
    images = _open_beton(cfg.data.train, "data.train")
    _check_classes(images, cfg.model.num_classes, "data.train")
    return TrainLoader(images, cfg, rank, world_size, torch.device(device))


def build_eval_loader(
    cfg: Config,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    path: str | None = None,
) -> EvalLoader:
    """`path` overrides cfg.data.val (e.g. `rmt_dist.evaluate --data VAL.beton`)."""
    _check_rank(rank, world_size)
    images = _open_beton(path or cfg.data.val, "data.val")
    _check_classes(images, cfg.model.num_classes, "data.val")
    return EvalLoader(images, cfg, rank, world_size, torch.device(device))
