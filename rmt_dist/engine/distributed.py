"""Process-group setup from torchrun's environment (the SLURM launcher sets the same variables).

Every run has a process group, even a single process (a 1-rank gloo group on a free
port): FSDP2, DCP and DeepSpeed then run the same code path whatever the world size.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # True when init_distributed created the group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={value!r} is not an integer (torchrun/SLURM set it)"
        ) from None


def pick_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def pick_backend(requested: str, device: torch.device) -> str:
    if requested != "auto":
        return requested
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(backend: str = "auto", timeout_s: int = 1800) -> DistInfo:
    """Join (or create) the default process group described by RANK/WORLD_SIZE/LOCAL_RANK.

    An existing default group (a test or launcher made one) is reused and left alone.
    """
    local_rank = _env_int("LOCAL_RANK", 0)
    device = pick_device(local_rank)
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, owns_group=False)
    backend = pick_backend(backend, device)
    timeout = datetime.timedelta(seconds=timeout_s)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise RuntimeError(
                    f"RANK/WORLD_SIZE are set but {name} is not (launch with torchrun or the SLURM launcher)"
                )
        dist.init_process_group(
            backend,
            rank=rank,
            world_size=world,
            timeout=timeout,
            device_id=device if device.type == "cuda" else None,
        )
    else:
        # Single process: a private store on a free port, so parallel test runs never collide.
        store = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, timeout=timeout)
        dist.init_process_group(backend, store=store, rank=0, world_size=1, timeout=timeout)
        rank, world = 0, 1
    return DistInfo(rank, world, local_rank, device, owns_group=True)


def shutdown_distributed(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over ranks in one collective (NaN/inf propagate, which is the point)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj, src: int = 0):
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """Every rank's `obj`, in rank order (a list of one outside a multi-rank group)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
