"""Throughput, memory and MFU (model FLOPs utilization), the one home of the MFU arithmetic.

    MFU = images/s x training FLOPs per image / (peak FLOP/s per device x devices)

Training FLOPs per image = 3 x the forward's FLOPs (forward + backward), counted with
torch.utils.flop_counter on the meta device (= 6 x MACs). The peak is the data sheet's
(PEAK_FLOPS, the one table) in training logs; bench/train_step.py may quote a measured
matmul peak instead (matmul_peak_flops), and says which in its header."""

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
    """The data-sheet peak of `device`, or None (CPU, or a GPU not in PEAK_FLOPS)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def matmul_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Best FLOP/s of a large square matmul: the attainable peak (issue 9 quotes its H200
    targets against the ~790 TFLOP/s measured this way, not the 989 TFLOP/s data sheet)."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(3):
        _sync(device)
        start = time.perf_counter()
        for _ in range(3):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - start) / 3)
    return 2 * n**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mfu(img_per_s: float, train_flops_per_image: float, peak_per_device: float, devices: int = 1) -> float:
    return img_per_s * train_flops_per_image / (peak_per_device * devices)


def count_train_flops(model: nn.Module, img_size: int) -> float:
    """Training FLOPs of one image: 3 x the forward's, counted on the meta device (`model` is
    built there; it is put in eval mode)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.empty(1, 3, img_size, img_size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x)
    return 3.0 * counter.get_total_flops()


def train_flops_per_image(cfg: Config) -> float | None:
    """Training FLOPs of one image of the recipe's model (count_train_flops), or None."""
    from ..models.factory import create

    try:
        with torch.device("meta"):
            model = create(cfg.model, mix_token=cfg.tokenlabel.mix_token)  # no init_checkpoint on meta
        return count_train_flops(model, cfg.data.img_size)
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
            out["mfu"] = mfu(img_per_s, self.flops_per_image, self.peak, self.info.world_size)
        self.start_window()
        return out

    def memory_gb(self) -> float:
        if self.info.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.info.device) / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # peak RSS (KiB on Linux)
