"""DeepSpeed ZeRO 1-3 with the engine's AdamW; DeepSpeed's own precision and checkpoints,
and their conversion to DeepSpeed's universal format when the world size changed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ...checkpoint_format.dirs import strategy_identity
from ...checkpoint_format.zero3 import join_partitions, partition_of
from ...config import DerivedConfig
from ..distributed import DistInfo
from ..optim import build_optimizer
from ..precision import DTYPES
from .protocol import StepOutcome, layout_mismatch
from .torch_native import cpu_fp32, sync_buffers


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

        from ..deepspeed_config import deepspeed_config

        os.environ.setdefault("LOCAL_RANK", str(info.local_rank))  # DeepSpeed insists on it (single process)

        self.cfg, self.info = cfg, info
        self.stage = cfg.strategy.zero_stage
        self.ds_config = deepspeed_config(cfg, info.world_size)
        _forget_stale_deepspeed_groups()
        optimizer = build_optimizer(model, cfg)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.ds_config, dist_init_required=False
        )
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

    def skip_step(self, lr: float, backwards_done: int) -> StepOutcome:
        """Without a backward there is nothing to undo. After backwards (accumulation) DeepSpeed
        must take its step to stay consistent; its overflow check skips NaN gradients, except
        where it has none (bf16/fp32 ZeRO), and then the update is applied (applied=True)."""
        if backwards_done == 0:
            return StepOutcome(float("nan"), applied=False)
        out = self.finish_step(lr)
        return StepOutcome(out.grad_norm, applied=out.applied, overflow=False)

    def cannot_skip_hint(self) -> str:
        return (
            f"under ZeRO stage {self.stage} and {self.cfg.precision}, which DeepSpeed cannot skip; the last good "
            "checkpoint is intact (use accum_steps=1 or ZeRO stage 1/2)"
        )

    def checkpoint_identity(self) -> dict:
        return strategy_identity("deepspeed", self.stage)

    def refuses(self, saved: dict) -> str | None:
        return layout_mismatch(saved, self.checkpoint_identity())

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
            persistent = {
                n: p
                for n, p in self.module.named_parameters()
                if self.stage == 3 and getattr(p, "ds_persist", False)
            }
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
        return all(
            bool(torch.isfinite(t).all()) for t in self.ema_sources().values() if t.is_floating_point()
        )

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
            load_path, _ = self.engine.load_checkpoint(
                str(path), tag="ds", load_optimizer_states=True, load_lr_scheduler_states=False
            )
        else:
            # ZeRO partitions depend on the world size: go through DeepSpeed's universal format.
            tag = self._to_universal(path)
            self.engine._config.load_universal_checkpoint = True  # read by load_checkpoint only
            try:
                load_path, _ = self.engine.load_checkpoint(
                    str(path), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False
                )
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
        import io
        import shutil
        from types import SimpleNamespace

        from deepspeed.checkpoint import ds_to_universal

        from ..distributed import barrier, broadcast_object

        out = path / "ds_universal"
        error = None
        if self.info.is_main and not out.is_dir():
            tmp = path / ".ds_universal.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            args = SimpleNamespace(
                input_folder=str(path / "ds"),
                output_folder=str(tmp),
                num_extract_workers=1,
                num_merge_workers=1,
                keep_temp_folder=False,
                strict=True,
                inject_missing_state=True,
            )
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
        saved = torch.load(
            sorted((path / "ds").glob("*model_states.pt"))[0], map_location="cpu", weights_only=False
        )["module"]
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
            return torch.load(
                path / f"ema_rank_{self.info.rank:05d}.pt", map_location="cpu", weights_only=True
            )
        parts = [torch.load(f, map_location="cpu", weights_only=True) for f in files]
        params = dict(self.module.named_parameters())
        out = {}
        for name, shard in ema.items():
            p = params.get(name)
            if p is None or not self._partitioned(p):  # buffers and whole parameters: the same on every rank
                out[name] = parts[0][name]
                continue
            full = join_partitions([part[name] for part in parts], p.ds_numel, (p.ds_numel,))
            out[name] = partition_of(full, self.info.rank, shard.numel())
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
            return {n: cpu_fp32(t) for n, t in self.module.state_dict().items()}
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
            return {n: cpu_fp32(t) for n, t in self.module.state_dict().items()}

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
            out[name] = join_partitions(parts, p.ds_numel, p.ds_shape).cpu().clone()
        return out
