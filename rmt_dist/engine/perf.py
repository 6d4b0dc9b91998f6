"""Throughput, memory and MFU (model FLOPs utilization, only where the device peak is known)."""

from __future__ import annotations

import logging
import resource
import time

import torch
from torch import nn

from ..config import Config
from .distributed import DistInfo

log = logging.getLogger(__name__)

# Dense bf16/fp16 tensor-core peaks (FLOP/s) per GPU, from the vendors' data sheets.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "V100": 125e12}


def device_peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def train_flops_per_image(cfg: Config) -> float | None:
    """Forward FLOPs of one image x 3 (forward + backward), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..models.factory import create

    try:
        with torch.device("meta"):
            model = create(cfg.model, mix_token=cfg.tokenlabel.mix_token)  # no init_checkpoint on meta
        x = torch.empty(1, 3, cfg.data.img_size, cfg.data.img_size, device="meta")
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.eval()(x)
        return 3.0 * counter.get_total_flops()
    except Exception as e:  # noqa: BLE001  (MFU is a nicety; never fail a run over it)
        log.info("MFU not reported: counting FLOPs failed (%s)", e)
        return None


class PerfMeter:
    def __init__(self, module: nn.Module, cfg: Config, info: DistInfo):
        self.info = info
        self.peak = device_peak_flops(info.device)
        self.flops_per_image = train_flops_per_image(cfg) if self.peak else None
        self.images = 0
        self.t0 = time.perf_counter()

    def start_window(self) -> None:
        self.images = 0
        self.t0 = time.perf_counter()
        if self.info.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.info.device)

    def count(self, images: int) -> None:
        self.images += images

    def end_window(self) -> dict[str, float]:
        if self.info.device.type == "cuda":
            torch.cuda.synchronize(self.info.device)
        dt = max(time.perf_counter() - self.t0, 1e-9)
        img_per_s = self.images / dt  # global images (all ranks)
        out = {"img_per_s": img_per_s, "mem_gb": self.memory_gb()}
        if self.peak and self.flops_per_image:
            out["mfu"] = img_per_s * self.flops_per_image / (self.peak * self.info.world_size)
        self.start_window()
        return out

    def memory_gb(self) -> float:
        if self.info.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.info.device) / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # peak RSS (KiB on Linux)
