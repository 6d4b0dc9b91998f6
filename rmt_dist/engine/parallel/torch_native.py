"""DDP and FSDP2: the torch optimizer, torch's GradScaler for fp16, DCP checkpoints
(torch.distributed.checkpoint reshards across world sizes)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
import torch.distributed as dist
from torch import nn

from ...checkpoint_format.dirs import strategy_identity
from ...config import DerivedConfig
from ..distributed import DistInfo
from ..optim import build_optimizer, set_lr
from ..precision import autocast, build_grad_scaler
from .prepare import shard_units
from .protocol import StepOutcome, layout_mismatch
from .sync_batchnorm import CrossRankBatchNorm2d

if TYPE_CHECKING:
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel


def _finite(x: float) -> bool:
    return math.isfinite(x)


def cpu_fp32(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    return (t.float() if t.is_floating_point() else t).cpu().clone()


def sync_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running stats) after each step.

    FSDP2 and DeepSpeed leave buffers per rank, and DDP only broadcasts them at the next
    forward; with this, every rank holds (and EMA-averages, evaluates, saves) the same
    model at every step boundary. One flat broadcast: the buffers are tiny. CrossRankBatchNorm2d
    (strategy.sync_batchnorm) computes the same running stats on every rank: left out."""
    in_sync = {
        id(b)
        for m in module.modules()
        if isinstance(m, CrossRankBatchNorm2d)
        for b in m.buffers(recurse=False)
    }
    bufs = [b for b in module.buffers() if b.is_floating_point() and id(b) not in in_sync]
    if not bufs or dist.get_world_size() == 1:
        return
    flat = torch.cat([b.detach().reshape(-1).float() for b in bufs])
    dist.broadcast(flat, src=0)
    offset = 0
    with torch.no_grad():
        for b in bufs:
            b.copy_(flat[offset : offset + b.numel()].view_as(b))
            offset += b.numel()


class TorchStrategy:
    """ddp and fsdp: torch optimizer, torch GradScaler for fp16, DCP checkpoints."""

    name = "torch"

    def __init__(self, model: nn.Module, cfg: DerivedConfig, info: DistInfo):
        self.cfg, self.info = cfg, info
        self.module = model  # names without wrapper prefixes
        self.wrapped = self._wrap(model)
        self.optimizer = build_optimizer(self.module, cfg)
        self.scaler = build_grad_scaler(cfg.precision, info.device)
        self._params = [p for p in self.module.parameters() if p.requires_grad]

    def _wrap(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def train(self, mode: bool = True) -> None:
        self.wrapped.train(mode)

    def forward(self, images: torch.Tensor):
        with autocast(self.cfg.precision, self.info.device):
            return self.wrapped(images)

    def _set_sync(self, sync: bool):
        raise NotImplementedError

    def backward(self, loss: torch.Tensor, accum_steps: int, sync: bool) -> None:
        loss = loss / accum_steps
        with self._set_sync(sync):
            (self.scaler.scale(loss) if self.scaler else loss).backward()

    def skip_step(self, lr: float, backwards_done: int) -> StepOutcome:
        """Drop the gradients of a step whose loss was not finite on some rank."""
        self.optimizer.zero_grad(set_to_none=True)
        return StepOutcome(float("nan"), applied=False)

    def cannot_skip_hint(self) -> str:
        return ""

    def checkpoint_identity(self) -> dict:
        return strategy_identity(self.cfg.strategy.name, self.cfg.strategy.zero_stage)

    def refuses(self, saved: dict) -> str | None:
        return layout_mismatch(saved, self.checkpoint_identity())

    def finish_step(self, lr: float) -> StepOutcome:
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        clip = self.cfg.optim.clip_grad
        norm_t = torch.nn.utils.clip_grad_norm_(self._params, clip if clip else math.inf)
        norm = float(norm_t.full_tensor() if hasattr(norm_t, "full_tensor") else norm_t)
        set_lr(self.optimizer, lr)
        if self.scaler:
            # Decide on the global norm, not the scaler's per-rank inf check: under FSDP each
            # rank sees only its shards, and all ranks must skip (or not) together.
            if not _finite(norm):
                self.scaler.update(new_scale=self.scaler.get_scale() * self.scaler.get_backoff_factor())
                self.optimizer.zero_grad(set_to_none=True)
                return StepOutcome(norm, applied=False, overflow=True)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            return StepOutcome(norm, applied=True)
        if not _finite(norm):  # the norm is global, so every rank takes the same branch
            self.optimizer.zero_grad(set_to_none=True)
            return StepOutcome(norm, applied=False)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepOutcome(norm, applied=True)

    def settle(self) -> None:
        """Bring the parameters back to their at-rest layout after an eval forward (FSDP)."""

    @contextlib.contextmanager
    def ema_swapped(self, ema) -> Iterator[None]:
        """Evaluate with the EMA weights in place of the model's, then put them back."""
        with ema.swapped_in(self.ema_sources()):
            try:
                yield
            finally:
                self.settle()  # drop gathered copies of the EMA weights before the weights return
        self.settle()

    def after_step(self) -> None:
        """Called after every applied optimizer step."""
        sync_buffers(self.module)

    def ema_sources(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {n: p for n, p in self.module.named_parameters()}
        out.update({n: b for n, b in self.module.named_buffers()})
        return out

    def params_finite(self) -> bool:
        from ..ema import local

        return all(bool(torch.isfinite(local(p)).all()) for p in self.module.parameters())

    # -- checkpoints (torch.distributed.checkpoint; reshards across world sizes) --
    def _dcp_state(self, ema: dict | None) -> dict:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        state = {
            "model": get_model_state_dict(self.wrapped),
            "optimizer": get_optimizer_state_dict(self.wrapped, self.optimizer),
        }
        if ema is not None:
            state["ema"] = ema
        return state

    def save(self, path: Path, ema: dict | None) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.save(self._dcp_state(ema), checkpoint_id=str(path / "dcp"))

    def load(self, path: Path, ema: dict | None) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        state = self._dcp_state(ema)
        dcp.load(state, checkpoint_id=str(path / "dcp"))
        set_model_state_dict(self.wrapped, state["model"])
        set_optimizer_state_dict(self.wrapped, self.optimizer, state["optimizer"])

    def extra_state(self) -> dict:
        return {"scaler": self.scaler.state_dict() if self.scaler else None}

    def load_extra_state(self, extra: dict) -> None:
        if self.scaler and extra.get("scaler"):
            self.scaler.load_state_dict(extra["scaler"])

    def full_state_dict(self, ema: dict | None = None) -> dict[str, torch.Tensor]:
        """Consolidated CPU tensors (collective; every rank gets them)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from ..ema import local

        self.settle()
        if ema is not None:
            return {
                n: (t.full_tensor() if hasattr(t, "full_tensor") else local(t)).detach().cpu().clone()
                for n, t in ema.items()
            }
        sd = get_model_state_dict(self.wrapped, options=StateDictOptions(full_state_dict=True))
        # A model's state dict holds tensors only; ValueType also covers optimizer state.
        return {n: cpu_fp32(t) for n, t in sd.items()}  # type: ignore[arg-type]


class DDPStrategy(TorchStrategy):
    name = "ddp"

    def _wrap(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.info.device.index] if self.info.device.type == "cuda" else None
        # Synchronised BatchNorm keeps its running stats equal on every rank: no broadcast per forward.
        return DistributedDataParallel(
            model, device_ids=ids, broadcast_buffers=not self.cfg.strategy.sync_batchnorm
        )

    def _set_sync(self, sync: bool):
        return contextlib.nullcontext() if sync else cast("DistributedDataParallel", self.wrapped).no_sync()


class FSDPStrategy(TorchStrategy):
    """FSDP2: fully_shard per block, per stage, then the root (torchtitan's layout)."""

    name = "fsdp"

    def _wrap(self, model: nn.Module) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(self.info.device.type, (self.info.world_size,))
        if self.cfg.precision == "bf16":
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        else:  # fp16 keeps fp32 params and relies on autocast + the grad scaler
            mp = MixedPrecisionPolicy()
        reshard = self.cfg.strategy.reshard_after_forward
        if self.cfg.precision == "bf16":
            # BatchNorm (RMT's stem, downsampling and head) needs its weights in the dtype of
            # its running statistics: keep those few modules in fp32 units of their own.
            fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and any(True for _ in m.parameters()):
                    fully_shard(m, mesh=mesh, mp_policy=fp32, reshard_after_forward=reshard)
        blocks, stages = shard_units(model)
        for unit in [*blocks, *stages]:
            fully_shard(unit, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
        # The root's parameters (stem, head) are needed right after the last block: keep them.
        fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
        return model

    def settle(self) -> None:
        """Reshard every FSDP unit. An eval forward leaves the root (reshard_after_forward=False)
        unsharded, and then named_parameters() shows the gathered copies, not the shards."""
        from torch.distributed.fsdp import FSDPModule

        for m in self.wrapped.modules():
            if isinstance(m, FSDPModule):
                m.reshard()

    def ema_sources(self) -> dict[str, torch.Tensor]:
        self.settle()
        return super().ema_sources()

    def _set_sync(self, sync: bool):
        cast("FSDPModule", self.wrapped).set_requires_gradient_sync(sync)
        return contextlib.nullcontext()


TORCH_STRATEGIES = {"ddp": DDPStrategy, "fsdp": FSDPStrategy}
