"""strategy.sync_batchnorm: CrossRankBatchNorm2d (rmt_dist/engine/parallel/sync_batchnorm.py)
on 2 gloo ranks must be one nn.BatchNorm2d over the global batch (outputs, gradients, running
stats), in float32 under bf16 autocast, and a real 2-rank training step must equal the
1-rank step on the whole batch (the official runs' SyncBatchNorm, qhfan/RMT
classfication_release/main.py)."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import timm
import torch
import torch.distributed as dist
from test_engine_support import config, run_ranks
from torch import nn

import rmt_dist.models  # noqa: F401  (registers rmt_test with timm)
from rmt_dist.engine.parallel.sync_batchnorm import (
    CrossRankBatchNorm2d,
    convert_sync_batchnorm,
    describe_sync,
)

SPLITS = ([4, 4], [2, 6])  # each rank's share of a batch of 8: equal and unequal


def _bn_pair(dtype: torch.dtype, momentum: float | None) -> tuple[nn.BatchNorm2d, nn.Module]:
    """(float64 reference, the converted copy in `dtype`)."""
    gen = torch.Generator().manual_seed(1)
    ref = nn.BatchNorm2d(3, momentum=momentum).double()
    with torch.no_grad():
        ref.weight.copy_(torch.rand(3, generator=gen) + 0.5)
        ref.bias.copy_(torch.randn(3, generator=gen))
    return ref, convert_sync_batchnorm(copy.deepcopy(ref).to(dtype))


def _batch(dtype: torch.dtype, step: int, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(10 + step)
    # A large offset: E[x^2] - E[x]^2 would lose the variance's digits here.
    x = (torch.randn(8, 3, 5, 7, generator=gen) * 0.5 + 300.0).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    return x, torch.randn(8, 3, 5, 7, generator=gen).to(dtype)


def _summed(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    dist.all_reduce(t)
    return t


def _close(got: torch.Tensor, expected: torch.Tensor, tol: dict, what: str) -> None:
    torch.testing.assert_close(got.double(), expected, **tol, msg=lambda m: f"{what}: {m}")


def _against_one_batchnorm(rank: int, world: int) -> None:
    dist.init_process_group("gloo")
    for split in SPLITS:
        lo, hi = sum(split[:rank]), sum(split[: rank + 1])
        for dtype, momentum, channels_last in (
            (torch.float64, 0.1, False),
            (torch.float64, None, False),
            (torch.float32, 0.1, True),
        ):
            # float32 against the float64 truth on the same values: the two-pass variance keeps
            # 1e-4 at an offset of 300 (E[x^2] - E[x]^2 in float32 would be off by percents;
            # torch's own float32 BatchNorm2d is off by 2e-3 on the weight gradient here)
            tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-3)
            ref, sync = _bn_pair(dtype, momentum)
            for step in range(3):  # running stats over several batches (momentum, cumulative average)
                x, g = _batch(dtype, step, channels_last)
                xr = x.double().clone().requires_grad_()
                expected = ref(xr)
                (expected * g.double()).sum().backward()  # the loss of all ranks together: sum of theirs
                xs = x[lo:hi].clone().requires_grad_()
                out = sync(xs)
                (out * g[lo:hi]).sum().backward()
                assert out.dtype == dtype
                where = f"{dtype}, momentum {momentum}, split {split}, step {step}"
                _close(out, expected[lo:hi], tol, f"output ({where})")
                _close(xs.grad, xr.grad[lo:hi], tol, f"input gradient ({where})")
                for name in ("weight", "bias"):
                    _close(
                        _summed(getattr(sync, name).grad),
                        getattr(ref, name).grad,
                        tol,
                        f"{name} gradient ({where})",
                    )
                    getattr(sync, name).grad = getattr(ref, name).grad = None
                for name in ("running_mean", "running_var"):
                    _close(getattr(sync, name), getattr(ref, name), tol, f"{name} ({where})")
                assert int(sync.num_batches_tracked) == int(ref.num_batches_tracked) == step + 1
                if channels_last:
                    assert out.is_contiguous(memory_format=torch.channels_last)


def test_two_ranks_equal_one_batchnorm_over_the_whole_batch(tmp_path):
    run_ranks(_against_one_batchnorm, 2, tmp=tmp_path)


def _bf16_autocast(rank: int, world: int) -> None:
    dist.init_process_group("gloo")
    ref, sync = _bn_pair(torch.float32, 0.1)
    for split in SPLITS:
        lo, hi = sum(split[:rank]), sum(split[: rank + 1])
        x, g = _batch(torch.float32, 0, False)
        x = (x - 300.0).bfloat16()  # what a bf16 conv hands the BatchNorm
        xr = x.double().requires_grad_()  # the same bf16 values, normalised in float64
        expected = ref(xr)
        (expected * g.double()).sum().backward()
        xs = x[lo:hi].clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = sync(xs)
        assert out.dtype == torch.bfloat16
        (out.float() * g[lo:hi]).sum().backward()
        bf16 = dict(rtol=1.6e-2, atol=1.6e-2)
        torch.testing.assert_close(out.double(), expected[lo:hi], **bf16)
        torch.testing.assert_close(xs.grad.double(), xr.grad[lo:hi], **bf16)
        # The statistics come from the same bf16 values, computed in float32: float32 close.
        for name in ("running_mean", "running_var"):
            assert getattr(sync, name).dtype == torch.float32
            torch.testing.assert_close(getattr(sync, name).double(), getattr(ref, name), rtol=1e-5, atol=1e-6)
        for name in ("weight", "bias"):
            got = _summed(getattr(sync, name).grad).double()
            torch.testing.assert_close(got, getattr(ref, name).grad, rtol=1e-2, atol=1e-2)
            getattr(sync, name).grad = getattr(ref, name).grad = None


def test_bf16_autocast_matches_float32_batchnorm(tmp_path):
    run_ranks(_bf16_autocast, 2, tmp=tmp_path)


def test_without_a_process_group_or_in_eval_it_is_plain_batchnorm():
    assert not dist.is_initialized()
    for training in (True, False):
        ref, sync = _bn_pair(torch.float32, 0.1)
        ref = ref.float().train(training)
        sync.train(training)
        x, _ = _batch(torch.float32, 0, False)
        assert torch.equal(sync(x), ref(x))
        assert torch.equal(sync.running_mean, ref.running_mean)
        assert torch.equal(sync.running_var, ref.running_var)


def test_converted_model_keeps_its_state_dict():
    """Checkpoints and weights files do not change: same keys, the very same tensors."""
    model = timm.create_model("rmt_test", num_classes=10)
    plain = {k: v for k, v in model.state_dict().items()}
    converted = convert_sync_batchnorm(model)
    assert sum(isinstance(m, CrossRankBatchNorm2d) for m in converted.modules()) > 0
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())
    after = converted.state_dict()
    assert list(after) == list(plain)
    assert all(after[k] is plain[k] or after[k].data_ptr() == plain[k].data_ptr() for k in plain)


# -- a real training run: 2 ranks with half the batch each == 1 rank with the whole batch --

GLOBAL_BATCH, STEPS = 16, 3


class _FixedBatches:
    """The Trainer's loader interface: this rank's share of the same global batches."""

    def __init__(self, rank: int, world: int):
        self.steps_per_epoch = 8
        per = GLOBAL_BATCH // world
        self.lo, self.hi = rank * per, (rank + 1) * per

    def epoch(self, epoch: int, start_step: int = 0):
        for step in range(start_step, self.steps_per_epoch):
            gen = torch.Generator().manual_seed(1000 * epoch + step)
            images = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=gen)
            labels = torch.randint(0, 10, (GLOBAL_BATCH,), generator=gen)
            targets = nn.functional.one_hot(labels, 10).float() * 0.9 + 0.01
            yield images[self.lo : self.hi], targets[self.lo : self.hi]


def _bn_stats(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


def _train(rank: int, world: int, tmp: Path, runs: list[tuple[str, str, bool]]) -> None:
    from rmt_dist.config import derive
    from rmt_dist.engine.distributed import init_distributed, shutdown_distributed
    from rmt_dist.engine.trainer import Trainer

    info = dataclasses.replace(init_distributed(), owns_group=False)  # one group for all runs
    results = {}
    for tag, strategy, sync in runs:
        run_dir = tmp / f"{tag}_w{world}"
        cfg = config(
            run_dir,
            strategy,
            f"strategy.sync_batchnorm={str(sync).lower()}",
            f"data.batch_size={GLOBAL_BATCH // world}",
            "checkpoint.resume=false",
            "run.tensorboard=false",
        )
        trainer = Trainer(derive(cfg, world), info, train_loader=_FixedBatches(rank, world))
        batches = trainer.train_loader.epoch(0)
        losses = [trainer.train_step([next(batches)]).loss]
        bn1 = _bn_stats(trainer.strategy.full_state_dict())  # depends on the initial weights only
        losses += [trainer.train_step([next(batches)]).loss for _ in range(STEPS - 1)]
        state = trainer.strategy.full_state_dict()
        ema = trainer.strategy.full_state_dict(ema=trainer.ema.state) if trainer.ema else {}
        bn = _bn_stats(state)
        bn_ema = {k: ema[k] for k in bn}
        if tag == "ddp_sync":
            assert trainer.save_checkpoint()
        trainer.close()
        results[tag] = {"losses": losses}
        torch.save(
            {"state": state, "bn1": bn1, "bn": bn, "bn_ema": bn_ema}, tmp / f"{tag}_w{world}_r{rank}.pt"
        )
    shutdown_distributed(dataclasses.replace(info, owns_group=True))
    if rank == 0:
        (tmp / f"losses_w{world}.json").write_text(json.dumps(results))


RUNS = [
    ("ddp_sync", "ddp", True),
    ("fsdp_sync", "fsdp", True),
    ("zero2_sync", "deepspeed", True),
    ("ddp_local", "ddp", False),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("syncbn_train")
    run_ranks(_train, 2, tmp, RUNS, tmp=tmp)
    run_ranks(_train, 1, tmp, RUNS[:1], tmp=tmp)
    return tmp


def _load(tmp: Path, name: str) -> dict:
    return torch.load(tmp / f"{name}.pt", weights_only=True)


@pytest.mark.parametrize("tag", ["ddp_sync", "fsdp_sync", "zero2_sync"])
def test_two_rank_training_equals_one_rank_on_the_whole_batch(trained, tag):
    two = json.loads((trained / "losses_w2.json").read_text())
    one = json.loads((trained / "losses_w1.json").read_text())["ddp_sync"]["losses"]
    torch.testing.assert_close(two[tag]["losses"], one, rtol=1e-5, atol=1e-6)
    single = _load(trained, "ddp_sync_w1_r0")
    ranks = [_load(trained, f"{tag}_w2_r{r}") for r in range(2)]
    assert ranks[0]["bn"], "the model has BatchNorm layers"
    for key, value in ranks[0]["bn1"].items():
        # After one step the statistics are those of the first global batch (whole batch, 1 rank).
        torch.testing.assert_close(value, single["bn1"][key], rtol=1e-5, atol=1e-6, msg=key)
    for key, value in ranks[0]["bn"].items():
        # Nothing broadcasts these (sync_buffers leaves them out): equal because computed alike.
        assert torch.equal(value, ranks[1]["bn"][key]), f"{key} differs between the ranks"
        assert torch.equal(ranks[0]["bn_ema"][key], ranks[1]["bn_ema"][key]), f"EMA {key}"
    # Later steps: AdamW turns float-rounding differences of near-zero gradients into
    # lr-sized ones, so the weights agree only to a few learning rates (measured: 1.1e-3).
    for key, value in ranks[0]["state"].items():
        torch.testing.assert_close(value, single["state"][key], rtol=1e-2, atol=5e-3, msg=key)


def test_per_rank_batchnorm_does_not_equal_the_whole_batch(trained):
    """The control: without sync_batchnorm the 2-rank run differs, so the test above can fail."""
    two = json.loads((trained / "losses_w2.json").read_text())["ddp_local"]["losses"]
    one = json.loads((trained / "losses_w1.json").read_text())["ddp_sync"]["losses"]
    assert abs(two[0] - one[0]) > 1e-4 * abs(one[0]), (two, one)
    local, single = _load(trained, "ddp_local_w2_r0")["bn1"], _load(trained, "ddp_sync_w1_r0")["bn1"]
    assert max(float((local[k] - single[k]).abs().max()) for k in single) > 1e-3


def test_sync_batchnorm_checkpoint_loads_into_the_plain_model(trained):
    from torch.distributed.checkpoint import FileSystemReader

    from rmt_dist.checkpoint_format.dirs import resolve_checkpoint
    from rmt_dist.export import load_consolidated

    model = timm.create_model("rmt_test", num_classes=10)
    ckpt = resolve_checkpoint(trained / "ddp_sync_w2")
    saved = {
        k.removeprefix("model.")
        for k in FileSystemReader(str(ckpt / "dcp")).read_metadata().state_dict_metadata
        if k.startswith("model.")
    }
    assert saved == set(model.state_dict()), "a sync-BN checkpoint holds the plain model's keys"
    weights = load_consolidated(trained / "ddp_sync_w2")
    model.load_state_dict(weights, strict=True)
    trained_state = _load(trained, "ddp_sync_w2_r0")["state"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, trained_state[key]), key


OFFICIAL = ["rmt_t", "rmt_s", "rmt_b", "rmt_l", "rmt_s_tokenlabel", "rmt_b_tokenlabel", "rmt_l_tokenlabel"]


@pytest.mark.parametrize("name", OFFICIAL + ["smoke", "demo_teacher", "demo_student"])
def test_official_recipes_synchronise_batchnorm(name):
    """Both releases' main.py convert the model with SyncBatchNorm; smoke and demo runs do not."""
    from rmt_dist.config import load_config

    cfg = load_config(Path(__file__).parents[1] / "recipes" / f"{name}.yaml")
    assert cfg.strategy.sync_batchnorm is (name in OFFICIAL)


def test_log_line_names_the_ranks_and_layers():
    model = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3), nn.BatchNorm1d(3), nn.BatchNorm2d(4)))
    assert describe_sync(model, 16) == (
        "BatchNorm synchronised across 16 ranks (2 BatchNorm2d layers, strategy.sync_batchnorm); "
        "per-rank still: BatchNorm1d (not converted)"
    )
