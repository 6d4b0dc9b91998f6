"""BatchNorm2d whose training statistics cover every rank's batch (`strategy.sync_batchnorm`).

The official runs convert the model with `torch.nn.SyncBatchNorm.convert_sync_batchnorm`
(qhfan/RMT `classfication_release/main.py` and `classification_token_label_release/main.py`):
each BN layer normalises with the mean and variance of the global batch, not the GPU's.
torch's SyncBatchNorm runs on CUDA only ("expected input tensor to be on GPU"), so this is
our own, one implementation for every device and backend (gloo on CPU included):

- statistics in float32 whatever the input dtype (bf16/fp16 autocast, DeepSpeed's bf16
  module), summed across ranks in float64 (a global per-channel count passes 2**24);
- two passes, numerically stable: all-reduce (sum, count) for the mean, then the sum of
  squared deviations from it, never E[x^2] - E[x]^2;
- ranks may hold different batch sizes (the counts weight them);
- the collectives are differentiable (an all-reduce whose backward all-reduces the
  gradient), so autograd gives the exact gradient of one BatchNorm over the global batch;
- running statistics updated as torch does (momentum or cumulative average, unbiased
  variance with the global count, num_batches_tracked), so every rank holds the same ones;
- eval mode, no process group or a world of one: plain nn.BatchNorm2d.

A subclass of nn.BatchNorm2d with no state of its own: state_dict keys, checkpoints and
weights files are those of the plain model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sum across ranks; the backward sums the gradients across ranks (as
    torch.distributed.nn.functional.all_reduce, which torch 2.13 deprecates with a
    FutureWarning on every call)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=ctx.group)
        return out, None


def all_reduce_sum(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    return _AllReduceSum.apply(tensor, group)


class CrossRankBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d with training statistics over all ranks of `process_group` (None: the world)."""

    def __init__(self, *args: Any, process_group: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def synced_world(self) -> int:
        """The ranks this forward's statistics cover (1: plain BatchNorm)."""
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.process_group)

    def _momentum_step(self) -> float:
        """torch's _BatchNorm.forward bookkeeping: count the batch, return the averaging factor."""
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        return factor

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.synced_world() == 1:
            return super().forward(input)
        self._check_input_dim(input)
        factor = self._momentum_step()
        channels = input.shape[1]
        dtype = torch.promote_types(input.dtype, torch.float32)  # float32, or float64 given float64
        x = input.to(dtype)  # keeps channels_last
        group = self.process_group
        local_count = torch.full(
            (1,), input.numel() // max(channels, 1), dtype=torch.float64, device=x.device
        )
        sums = all_reduce_sum(torch.cat([x.sum(dim=(0, 2, 3)).double(), local_count]), group)
        count = sums[channels:].detach()
        mean = (sums[:channels] / count).to(dtype)
        diff = x - mean.view(1, -1, 1, 1)
        sq_dev = all_reduce_sum((diff * diff).sum(dim=(0, 2, 3)).double(), group)
        var = (sq_dev / count).to(dtype)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight.to(dtype)
        out = diff * scale.view(1, -1, 1, 1)
        if self.affine:
            out = out + self.bias.to(dtype).view(1, -1, 1, 1)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                unbiased = (sq_dev.detach() / (count - 1)).to(dtype)
                rm, rv = self.running_mean, self.running_var
                rm.copy_((factor * mean.detach() + (1.0 - factor) * rm.to(dtype)).to(rm.dtype))
                rv.copy_((factor * unbiased + (1.0 - factor) * rv.to(dtype)).to(rv.dtype))
        return out.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, process_group: Any = None) -> nn.Module:
    """Replace every plain nn.BatchNorm2d in `module` by a CrossRankBatchNorm2d holding the same
    parameter and buffer tensors (returns the new module when `module` itself is one).
    Subclasses of BatchNorm2d (their forward may differ) and other BatchNorms stay as they are."""
    if type(module) is nn.BatchNorm2d:
        new = CrossRankBatchNorm2d(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            process_group=process_group,
            device=module.running_mean.device if module.running_mean is not None else None,
        )
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean = module.running_mean
            new.running_var = module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child, process_group)
        if converted is not child:
            setattr(module, name, converted)
    return module


def describe_sync(model: nn.Module, world_size: int) -> str:
    """The log line: how many BN layers are synchronised, and any that stay per rank."""
    synced = sum(isinstance(m, CrossRankBatchNorm2d) for m in model.modules())
    other = sorted(
        {
            type(m).__name__
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, CrossRankBatchNorm2d)
        }
    )
    line = f"BatchNorm synchronised across {world_size} ranks ({synced} BatchNorm2d layers, strategy.sync_batchnorm)"
    if other:
        line += f"; per-rank still: {', '.join(other)} (not converted)"
    return line
