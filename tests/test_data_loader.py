"""Loaders on the real digits betons: sharding, reproducibility, resume, crops, eval coverage."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from data_helpers import data_config, digits_betons
from PIL import Image

from rmt_dist.data import build_eval_loader, build_train_loader
from rmt_dist.data.decode import BetonImages
from rmt_dist.data.errors import DataError
from rmt_dist.data.loader import worker_threads

FULL_AUG = dict(auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=0.8, cutmix=1.0, label_smoothing=0.1)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return digits_betons(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def stored(digits):
    """Every training image as stored (raw 32x32 RGB), decoded straight from the beton bytes."""
    im = BetonImages(str(digits[0]))
    assert (im.modes == 1).all()
    return np.stack(
        [np.asarray(im.data[p : p + s]).reshape(32, 32, 3) for p, s in zip(im.ptrs, im.sizes)]
    ), im.labels


def denormalize(x: torch.Tensor, cfg) -> np.ndarray:
    mean = torch.tensor(cfg.data.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(cfg.data.std).view(1, 3, 1, 1) * 255
    return (x * std + mean).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def test_shards_are_distinct_and_complete_over_two_ranks(digits):
    cfg = data_config(*digits, batch_size=16)
    seen, shards = [], []
    for rank in range(2):
        loader = build_train_loader(cfg, rank=rank, world_size=2)
        idx = [m["indices"] for _, _, m in loader.epoch(3, with_meta=True)]
        assert len(idx) == loader.steps_per_epoch == (1438 // 2) // 16
        seen.append(torch.cat(idx).numpy())
        shards.append(loader.indices(3))
        assert np.array_equal(seen[-1], shards[-1][: len(seen[-1])])  # batches follow the shard order
    assert not set(seen[0]) & set(seen[1])
    assert sorted(np.concatenate(shards)) == list(range(1438))  # 1438 = 2 x 719: nothing dropped


def test_repeated_augmentation_sends_copies_to_different_ranks(digits):
    cfg = data_config(*digits, repeated_aug=True, num_repeats=3)
    shards = [build_train_loader(cfg, rank=r, world_size=3).indices(0) for r in range(3)]
    assert all(len(s) == 1438 // 3 for s in shards)
    for s in shards:
        assert len(set(s.tolist())) == len(s)  # within a rank each sample once: its copies went elsewhere
    counts = np.bincount(np.concatenate(shards), minlength=1438)
    assert set(counts.tolist()) <= {0, 3} and (counts == 3).sum() == 1438 // 3


def test_order_depends_only_on_seed_and_epoch(digits):
    a = build_train_loader(data_config(*digits), rank=1, world_size=2)
    b = build_train_loader(data_config(*digits), rank=1, world_size=2)
    assert np.array_equal(a.indices(5), b.indices(5))
    assert not np.array_equal(a.indices(5), a.indices(6))
    cfg = data_config(*digits, overrides=["run.seed=1"])
    assert not np.array_equal(build_train_loader(cfg, rank=1, world_size=2).indices(5), a.indices(5))


def test_resume_mid_epoch_replays_identical_batches_with_all_augmentations(digits):
    cfg = data_config(*digits, **FULL_AUG)
    loader = build_train_loader(cfg, rank=0, world_size=2)
    full = list(loader.epoch(1, with_meta=True))
    again = list(loader.epoch(1, start_step=17, with_meta=True))
    assert len(again) == len(full) - 17
    for (x1, y1, m1), (x2, y2, m2) in zip(full[17:], again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(m1["boxes"], m2["boxes"])
    fresh = build_train_loader(cfg, rank=0, world_size=2)  # a new process after a restart
    x3, y3 = next(iter(fresh.epoch(1, start_step=20)))
    assert torch.equal(x3, full[20][0]) and torch.equal(y3, full[20][1])
    other = next(iter(loader.epoch(2)))
    assert not torch.equal(other[0], full[0][0])
    lams = {m["mix_lam"] for _, _, m in full}
    assert len(lams) > 5  # mixing really happened, with varying strength
    assert torch.allclose(full[0][1].sum(1), torch.ones(16))


def test_crop_and_flip_meta_reproduce_the_images(digits, stored):
    """What token labeling relies on: box + flip in `meta` map the stored image to the batch."""
    cfg = data_config(*digits, scale=[0.25, 1.0])
    pixels, labels = stored
    loader = build_train_loader(cfg, rank=0, world_size=1)
    flipped_any = False
    for step, (x, y, meta) in enumerate(loader.epoch(0, with_meta=True)):
        got = denormalize(x, cfg)
        assert x.dtype == torch.float32 and x.shape == (16, 3, 32, 32)
        assert torch.equal(meta["labels"], torch.from_numpy(labels[meta["indices"].numpy()]))
        assert torch.allclose(y.argmax(1), meta["labels"]) and y.max() == pytest.approx(0.9 + 0.01)
        for k in range(16):
            t, left, h, w = meta["boxes"][k].tolist()
            assert meta["image_size"][k].tolist() == [32, 32]
            src = pixels[meta["indices"][k]][t : t + h, left : left + w]
            want = np.asarray(Image.fromarray(src).resize((32, 32), Image.BICUBIC))  # timm's crop
            if meta["flipped"][k]:
                want = want[:, ::-1]
                flipped_any = True
            np.testing.assert_array_equal(got[k], want)
        if step == 3:
            break
    assert flipped_any


def test_channels_last_and_device_placement(digits):
    cfg = data_config(*digits, overrides=["model.channels_last=true"])
    x, _ = next(iter(build_train_loader(cfg).epoch(0)))
    assert x.is_contiguous(memory_format=torch.channels_last) and x.device.type == "cpu"
    cfg = data_config(*digits, overrides=["model.channels_last=false"])
    x, _ = next(iter(build_train_loader(cfg).epoch(0)))
    assert x.is_contiguous()


@pytest.mark.parametrize("channels_last", [False, True])
def test_randaugment_on_the_device_gives_the_workers_batches(digits, channels_last):
    """data.randaugment_on=device (what `auto` picks on CUDA: torch ops after the copy,
    then torch normalise/erase/mix) yields bit-identical batches to the worker path."""
    loaders = {}
    for where in ("host", "device", "auto"):
        cfg = data_config(
            *digits, randaugment_on=where, overrides=[f"model.channels_last={channels_last}"], **FULL_AUG
        )
        loaders[where] = build_train_loader(cfg, rank=1, world_size=2)
    assert "RandAugment on the device (cpu)" in loaders["device"].describe()
    assert "RandAugment in the workers (cpu)" in loaders["auto"].describe()  # auto on CPU: the workers
    steps = 0
    for (x1, y1), (x2, y2) in zip(
        loaders["host"].epoch(2, start_step=30), loaders["device"].epoch(2, start_step=30)
    ):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert (
            x1.is_contiguous(memory_format=torch.channels_last)
            == channels_last
            == x2.is_contiguous(memory_format=torch.channels_last)
        )
        steps += 1
    assert steps == loaders["host"].steps_per_epoch - 30 > 0


def test_eval_covers_every_sample_once_across_ranks(digits):
    cfg = data_config(*digits, eval_batch_size=50)
    im = BetonImages(str(digits[1]))
    seen, sizes = [], []
    for rank in range(2):
        ev = build_eval_loader(cfg, rank=rank, world_size=2)
        for x, labels in ev:
            assert labels.dtype == torch.int64 and x.shape[1:] == (3, 32, 32)
            sizes.append(len(labels))
            seen.append(labels)
        assert sum(len(lbl) for lbl in seen) == sum(sizes)
    assert sum(sizes) == 359 and sizes[-1] < 50  # 180 + 179: short last batches, no padding
    assert torch.equal(torch.cat(seen), torch.from_numpy(im.labels))
    first, _ = next(iter(build_eval_loader(cfg)))  # crop_pct 1.0 on square images: the image itself
    raw = np.asarray(im.data[im.ptrs[0] : im.ptrs[0] + im.sizes[0]]).reshape(32, 32, 3)
    assert np.abs(denormalize(first[:1], cfg)[0].astype(int) - raw.astype(int)).max() <= 1


def test_bad_settings_fail_with_the_fix(digits, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_train_loader(data_config(tmp_path / "missing.beton"))
    with pytest.raises(DataError, match="num_classes"):
        build_train_loader(data_config(*digits, overrides=["model.num_classes=5"]))
    with pytest.raises(DataError, match="even batch"):
        build_train_loader(data_config(*digits, batch_size=15, mixup=0.8))
    with pytest.raises(DataError, match="fewer than one batch"):
        build_train_loader(data_config(*digits, batch_size=1000), world_size=2)


def test_workers_capped_by_cpu_affinity():
    import numba

    allowed = os.sched_getaffinity(0)
    assert worker_threads(10_000) == min(len(allowed), numba.config.NUMBA_NUM_THREADS)
    assert worker_threads(1) == 1
    # As under a SLURM/cgroup CPU binding: fewer CPUs than the machine (and numba's pool) has.
    os.sched_setaffinity(0, {min(allowed)})  # this thread only; restored below
    try:
        assert worker_threads(10_000) == 1, "data.num_workers must be capped by the CPU affinity"
    finally:
        os.sched_setaffinity(0, allowed)
