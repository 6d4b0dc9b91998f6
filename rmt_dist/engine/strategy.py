"""Distribution applied from outside the model, in one place and one fixed order:

    activation checkpointing -> compile -> shard/wrap (ddp | fsdp | deepspeed)

Each strategy offers the same small surface to the trainer (forward, backward,
finish_step, EMA sources, save/load, full state dict), so the training loop has no
strategy branches. The model code itself knows nothing of distribution.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as dist
from torch import nn

from ..config import Config, DerivedConfig
from .distributed import DistInfo
from .optim import build_optimizer, set_lr
from .precision import DTYPES, autocast, build_grad_scaler

if TYPE_CHECKING:
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel


@dataclass
class StepOutcome:
    grad_norm: float  # before clipping; nan when the step was abandoned before backward
    applied: bool  # False: the update was skipped (non-finite loss/gradients, fp16 overflow)
    overflow: bool = False  # fp16 loss-scale overflow (a normal event, not a bad step)


def shard_units(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(blocks, stages) to wrap one by one under FSDP2 (and to compile).

    RMT says so itself (`model.blocks()`, `model.stages()`); for other models blocks
    are modules whose class name ends in "Block" and stages are modules whose class name
    ends in "Layer" or "Stage" (RMT's BasicLayer) and that contain blocks."""
    if hasattr(model, "blocks") and hasattr(model, "stages") and callable(model.blocks):
        return list(model.blocks()), list(model.stages())
    blocks = [m for m in model.modules() if type(m).__name__.endswith("Block") and m is not model]
    block_ids = {id(b) for b in blocks}
    stages = [m for m in model.modules() if m is not model and type(m).__name__.endswith(("Layer", "Stage"))
              and any(id(c) in block_ids for c in m.modules())]
    return blocks, stages


def prepare_model(model: nn.Module, cfg: Config, device: torch.device) -> nn.Module:
    """The strategy-independent part, in the fixed order: device, grad-ckpt, compile."""
    model = model.to(device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to takes it; torch's overloads omit it
    if cfg.model.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ValueError(f"model.grad_checkpointing=true but {type(model).__name__} has no set_grad_checkpointing()")
        cast(Any, model).set_grad_checkpointing(True)  # the model's own method (hasattr above)
    if cfg.model.compile:
        blocks, _ = shard_units(model)
        # Every block's distinct drop-path rate specialises its graph: allow one compile per
        # block, or blocks past dynamo's recompile limit silently run eager (seen with rmt_t).
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, len(blocks) + 8)
        for block in blocks:  # per block (as torchtitan): small graphs, sharding hooks stay outside
            # Static shapes: a stage has one grid size, and inductor in torch 2.13 fails on the
            # dynamic-shape recompile RMT blocks get when the next stage's size arrives.
            block.compile(dynamic=False)
    return model


def _finite(x: float) -> bool:
    return math.isfinite(x)


def _cpu_fp32(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    return (t.float() if t.is_floating_point() else t).cpu().clone()


def sync_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running stats) after each step.

    FSDP2 and DeepSpeed leave buffers per rank, and DDP only broadcasts them at the next
    forward; with this, every rank holds (and EMA-averages, evaluates, saves) the same
    model at every step boundary. One flat broadcast: the buffers are tiny."""
    bufs = [b for b in module.buffers() if b.is_floating_point()]
    if not bufs or dist.get_world_size() == 1:
        return
    flat = torch.cat([b.detach().reshape(-1).float() for b in bufs])
    dist.broadcast(flat, src=0)
    offset = 0
    with torch.no_grad():
        for b in bufs:
            b.copy_(flat[offset: offset + b.numel()].view_as(b))
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

    def abandon_step(self) -> None:
        """Drop the gradients of a step whose loss was not finite on some rank."""
        self.optimizer.zero_grad(set_to_none=True)

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
        from .ema import local

        return all(bool(torch.isfinite(local(p)).all()) for p in self.module.parameters())

    # -- checkpoints (torch.distributed.checkpoint; reshards across world sizes) --
    def _dcp_state(self, ema: dict | None) -> dict:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        state = {"model": get_model_state_dict(self.wrapped),
                 "optimizer": get_optimizer_state_dict(self.wrapped, self.optimizer)}
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

        from .ema import local

        self.settle()
        if ema is not None:
            return {n: (t.full_tensor() if hasattr(t, "full_tensor") else local(t)).detach().cpu().clone()
                    for n, t in ema.items()}
        sd = get_model_state_dict(self.wrapped, options=StateDictOptions(full_state_dict=True))
        # A model's state dict holds tensors only; ValueType also covers optimizer state.
        return {n: _cpu_fp32(t) for n, t in sd.items()}  # type: ignore[arg-type]


class DDPStrategy(TorchStrategy):
    name = "ddp"

    def _wrap(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.info.device.index] if self.info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

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


def _forget_stale_deepspeed_groups() -> None:
    """DeepSpeed caches its clone of the world group for the life of the process; after the
    process group was destroyed and created anew (a second run in one process, e.g. a resume
    on another world size in the tests) that clone is dead and deepspeed.initialize fails."""
    from deepspeed.utils import groups

    if groups._WORLD_GROUP is not None:
        try:
            dist.get_global_rank(groups._WORLD_GROUP, 0)
        except (ValueError, RuntimeError):  # "not registered": it belonged to the old group
            groups._WORLD_GROUP = None


class DeepSpeedStrategy:
    """DeepSpeed ZeRO 1-3 with the engine's AdamW; DeepSpeed's own precision and checkpoints."""

    name = "deepspeed"

    def __init__(self, model: nn.Module, cfg: DerivedConfig, info: DistInfo):
        import os

        import deepspeed

        from .deepspeed_config import deepspeed_config

        os.environ.setdefault("LOCAL_RANK", str(info.local_rank))  # DeepSpeed insists on it (single process)

        self.cfg, self.info = cfg, info
        self.stage = cfg.strategy.zero_stage
        self.ds_config = deepspeed_config(cfg, info.world_size)
        _forget_stale_deepspeed_groups()
        optimizer = build_optimizer(model, cfg)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                                 config=self.ds_config, dist_init_required=False)
        self.module = self.engine.module
        self.scaler = None

    def train(self, mode: bool = True) -> None:
        self.engine.train(mode)

    def forward(self, images: torch.Tensor):
        if self.cfg.precision != "fp32":
            images = images.to(DTYPES[self.cfg.precision])  # DeepSpeed holds the module in that dtype
        return self.engine(images)

    def backward(self, loss: torch.Tensor, accum_steps: int, sync: bool) -> None:
        # DeepSpeed divides by gradient_accumulation_steps and applies its loss scale itself.
        self.engine.backward(loss.float())
        if not sync:
            self.engine.step()  # a micro-step: DeepSpeed only counts it

    def abandon_step(self) -> None:
        """Nothing to undo: the trainer skips backward and step of a step with a non-finite loss
        (with accum_steps=1; see Trainer._can_abandon)."""

    def finish_step(self, lr: float) -> StepOutcome:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        norm = float("nan") if norm is None else float(norm)
        applied = bool(self.engine.was_step_applied())
        return StepOutcome(norm, applied=applied, overflow=not applied and self.cfg.precision == "fp16")

    def after_step(self) -> None:
        sync_buffers(self.module)

    def settle(self) -> None:
        """ZeRO-3 releases gathered parameters after each module's forward by itself."""

    @contextlib.contextmanager
    def ema_swapped(self, ema) -> Iterator[None]:
        """Partitions are swapped in place; ZeRO-3's persistent (small) parameters are held
        whole and never re-gathered from their partitions, so they get the full EMA too."""
        with ema.swapped_in(self.ema_sources()):
            persistent = {n: p for n, p in self.module.named_parameters()
                          if self.stage == 3 and getattr(p, "ds_persist", False)}
            full = self._gather_partitions({n: ema.state[n] for n in persistent})
            backup = {n: p.data.clone() for n, p in persistent.items()}
            with torch.no_grad():
                for n, p in persistent.items():
                    p.data.copy_(full[n].to(device=p.device, dtype=p.dtype))
            try:
                yield
            finally:
                with torch.no_grad():
                    for n, p in persistent.items():
                        p.data.copy_(backup[n])

    def _partitioned(self, p: torch.Tensor) -> bool:
        return self.stage == 3 and hasattr(p, "ds_tensor")

    def ema_sources(self) -> dict[str, torch.Tensor]:
        # ZeRO-3 parameters are empty outside a gather: average this rank's flat partition.
        out = {n: (p.ds_tensor if self._partitioned(p) else p) for n, p in self.module.named_parameters()}
        out.update({n: b for n, b in self.module.named_buffers()})
        return out

    def params_finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in self.ema_sources().values() if t.is_floating_point())

    def save(self, path: Path, ema: dict | None) -> None:
        self.engine.save_checkpoint(str(path), tag="ds", save_latest=False)
        if ema is not None:
            # ZeRO-3: one file of flat partitions per rank; ZeRO-1/2: the full EMA from rank 0.
            if self.stage == 3:
                torch.save(ema, path / f"ema_rank_{self.info.rank:05d}.pt")
            elif self.info.rank == 0:
                torch.save(ema, path / "ema.pt")

    def load(self, path: Path, ema: dict | None) -> None:
        saved_world = len(list((path / "ds").glob("*zero_pp_rank_*_optim_states.pt")))
        if saved_world in (0, self.info.world_size):
            load_path, _ = self.engine.load_checkpoint(str(path), tag="ds", load_optimizer_states=True,
                                                       load_lr_scheduler_states=False)
        else:
            # ZeRO partitions depend on the world size: go through DeepSpeed's universal format.
            tag = self._to_universal(path)
            self.engine._config.load_universal_checkpoint = True  # read by load_checkpoint only
            try:
                load_path, _ = self.engine.load_checkpoint(str(path), tag=tag, load_optimizer_states=True,
                                                           load_lr_scheduler_states=False)
            finally:
                self.engine._config.load_universal_checkpoint = False
            self._load_buffers(path)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint under {path}/ds")
        if ema is not None:
            saved = self._load_ema(path, ema)
            with torch.no_grad():
                for key, t in ema.items():
                    t.copy_(saved[key])

    def _to_universal(self, path: Path) -> str:
        """Convert path/ds to path/ds_universal once (rank 0; written aside, then renamed)."""
        import contextlib
        import io
        import shutil
        from types import SimpleNamespace

        from deepspeed.checkpoint import ds_to_universal

        from .distributed import barrier, broadcast_object

        out = path / "ds_universal"
        error = None
        if self.info.is_main and not out.is_dir():
            tmp = path / ".ds_universal.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            args = SimpleNamespace(input_folder=str(path / "ds"), output_folder=str(tmp), num_extract_workers=1,
                                   num_merge_workers=1, keep_temp_folder=False, strict=True,
                                   inject_missing_state=True)
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # its progress prints
                    ds_to_universal.main(args)
                (path / "latest_universal").unlink(missing_ok=True)  # names the temporary folder
                tmp.rename(out)
            except Exception as e:  # noqa: BLE001  (every rank must learn of it, or they hang)
                error = f"converting {path}/ds to DeepSpeed's universal checkpoint failed: {e}"
        error = broadcast_object(error)
        barrier()
        if error:
            raise RuntimeError(error)
        return out.name

    def _load_buffers(self, path: Path) -> None:
        """A universal load restores parameters only: take the buffers (BatchNorm statistics,
        the same on every rank) from the saved module state."""
        saved = torch.load(sorted((path / "ds").glob("*model_states.pt"))[0], map_location="cpu",
                           weights_only=False)["module"]
        with torch.no_grad():
            for name, b in self.module.named_buffers():
                if name in saved:
                    b.copy_(saved[name])

    def _load_ema(self, path: Path, ema: dict) -> dict[str, torch.Tensor]:
        """This rank's saved EMA. ZeRO-3 saved flat partitions per rank: from another world
        size, join them into the full tensor and cut out this rank's new partition."""
        if self.stage != 3:
            return torch.load(path / "ema.pt", map_location="cpu", weights_only=True)
        files = sorted(path.glob("ema_rank_*.pt"))
        if len(files) == self.info.world_size:
            return torch.load(path / f"ema_rank_{self.info.rank:05d}.pt", map_location="cpu", weights_only=True)
        parts = [torch.load(f, map_location="cpu", weights_only=True) for f in files]
        params = dict(self.module.named_parameters())
        out = {}
        for name, shard in ema.items():
            p = params.get(name)
            if p is None or not self._partitioned(p):  # buffers and whole parameters: the same on every rank
                out[name] = parts[0][name]
                continue
            full = torch.cat([part[name] for part in parts])[: p.ds_numel]
            piece = full[self.info.rank * shard.numel():][: shard.numel()]
            out[name] = torch.cat([piece, piece.new_zeros(shard.numel() - piece.numel())])  # ZeRO pads the end
        return out

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, extra: dict) -> None:
        pass

    def full_state_dict(self, ema: dict | None = None) -> dict[str, torch.Tensor]:
        """Consolidated fp32 CPU tensors on every rank (collective under ZeRO-3)."""
        if ema is not None:
            if self.stage != 3:
                return {n: t.detach().cpu().clone() for n, t in ema.items()}
            return self._gather_partitions(ema)
        if self.stage != 3:
            return {n: _cpu_fp32(t) for n, t in self.module.state_dict().items()}
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
            return {n: _cpu_fp32(t) for n, t in self.module.state_dict().items()}

    def _gather_partitions(self, ema: dict) -> dict[str, torch.Tensor]:
        params = dict(self.module.named_parameters())
        out = {}
        for name, t in ema.items():
            p = params.get(name)
            if p is None or not hasattr(p, "ds_tensor"):
                out[name] = t.detach().cpu().clone()
                continue
            parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, t.contiguous())
            out[name] = torch.cat(parts)[: p.ds_numel].view(p.ds_shape).cpu().clone()
        return out


STRATEGIES = {"ddp": DDPStrategy, "fsdp": FSDPStrategy, "deepspeed": DeepSpeedStrategy}


def parallelize(model: nn.Module, cfg: DerivedConfig, info: DistInfo):
    """The one place where a single-device model becomes a distributed one."""
    model = prepare_model(model, cfg, info.device)
    return STRATEGIES[cfg.strategy.name](model, cfg, info)
