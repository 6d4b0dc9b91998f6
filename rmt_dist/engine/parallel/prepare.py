"""Model preparation, the strategy-independent part, in one fixed order:

    sync BatchNorm -> device -> channels_last -> activation checkpointing -> compile

The trainer (through `parallelize`) and `bench/train_step.py` both prepare models here.
Compile modes:
    none           eager
    blocks         each block compiled alone (the trainer's `model.compile=true`): small graphs,
                   sharding hooks stay outside them (as torchtitan)
    shared-blocks  as blocks, but drop path keeps its probability in a buffer (StochasticDepth),
                   so the blocks of a stage share one graph instead of one graph per block
    model          torch.compile of the whole model (returns the compiled wrapper)
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

COMPILE_MODES = ("none", "blocks", "shared-blocks", "model")


def shard_units(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(blocks, stages) to wrap one by one under FSDP2 (and to compile).

    RMT says so itself (`model.blocks()`, `model.stages()`); for other models blocks
    are modules whose class name ends in "Block" and stages are modules whose class name
    ends in "Layer" or "Stage" (RMT's BasicLayer) and that contain blocks."""
    if hasattr(model, "blocks") and hasattr(model, "stages") and callable(model.blocks):
        return list(model.blocks()), list(model.stages())
    blocks = [m for m in model.modules() if type(m).__name__.endswith("Block") and m is not model]
    block_ids = {id(b) for b in blocks}
    stages = [
        m
        for m in model.modules()
        if m is not model
        and type(m).__name__.endswith(("Layer", "Stage"))
        and any(id(c) in block_ids for c in m.modules())
    ]
    return blocks, stages


class StochasticDepth(nn.Module):
    """timm's DropPath (per-sample keep mask scaled by 1/keep) with the keep probability in a
    buffer: dynamo treats a buffer as a graph input, a float attribute as a constant to guard
    on, so blocks differing only in their rate share one compiled graph."""

    keep_prob: torch.Tensor

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.register_buffer("keep_prob", torch.tensor(1.0 - drop_prob), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        keep = torch.rand(shape, device=x.device) < self.keep_prob
        return x * (keep / self.keep_prob).to(x.dtype)


def share_block_graphs(blocks: list[nn.Module]) -> None:
    """Give every block a StochasticDepth (blocks without drop path get keep 1, the same
    graph as their stage's others at the cost of one multiply)."""
    for block in blocks:
        block.drop_path = StochasticDepth(getattr(block.drop_path, "drop_prob", 0.0))


def prepare_model(
    model: nn.Module,
    device: torch.device | str,
    *,
    channels_last: bool = False,
    grad_checkpointing: bool = False,
    compile: str = "none",
    backend="inductor",
    sync_batchnorm: bool = False,
) -> nn.Module:
    """Prepare `model` in place; returns the module to call (the compiled wrapper for
    compile="model", else `model` itself). `sync_batchnorm`: BatchNorm2d layers become
    CrossRankBatchNorm2d (sync_batchnorm.py), before anything compiles or wraps them."""
    if compile not in COMPILE_MODES:
        raise ValueError(f"compile={compile!r}: use one of {', '.join(COMPILE_MODES)}")
    if sync_batchnorm:
        from .sync_batchnorm import convert_sync_batchnorm

        model = convert_sync_batchnorm(model)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to takes it; torch's overloads omit it
    if grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ValueError(
                f"model.grad_checkpointing=true but {type(model).__name__} has no set_grad_checkpointing()"
            )
        cast(Any, model).set_grad_checkpointing(True)  # the model's own method (hasattr above)
    if compile == "model":
        return cast(nn.Module, torch.compile(model, backend=backend))  # an OptimizedModule
    if compile in ("blocks", "shared-blocks"):
        blocks, _ = shard_units(model)
        if compile == "shared-blocks":
            share_block_graphs(blocks)
        # Every block's distinct drop-path rate specialises its graph (unless shared): allow one
        # compile per block, or blocks past dynamo's recompile limit silently run eager (seen with rmt_t).
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, len(blocks) + 8)
        for block in blocks:
            # Static shapes: a stage has one grid size, and inductor in torch 2.13 fails on the
            # dynamic-shape recompile RMT blocks get when the next stage's size arrives
            # (get_stride_order: "cannot determine truth value of Relational: 32*s16*s27 < 32").
            block.compile(dynamic=False, backend=backend)
    return model
