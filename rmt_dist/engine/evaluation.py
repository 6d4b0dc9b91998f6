"""Distributed top-1/top-5: each rank counts its share of the val set, one all-reduce sums."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .distributed import all_reduce_sum


def eval_logits(output) -> torch.Tensor:
    """Token-label models return their eval output first (cls + 0.5 x max token logits)."""
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def evaluate(forward, batches: Iterable, device: torch.device, prefix: str = "eval") -> dict[str, float]:
    correct1 = correct5 = total = 0.0
    for images, labels in batches:
        logits = eval_logits(forward(images)).float()
        k = min(5, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices
        hit = top.eq(labels.view(-1, 1))
        correct1 += float(hit[:, :1].sum())
        correct5 += float(hit.any(dim=-1).sum())
        total += labels.numel()
    correct1, correct5, total = all_reduce_sum([correct1, correct5, total], device)
    if total == 0:
        raise RuntimeError("evaluation saw no samples: is data.val an empty beton?")
    return {
        f"{prefix}/top1": 100.0 * correct1 / total,
        f"{prefix}/top5": 100.0 * correct5 / total,
        f"{prefix}/samples": int(total),
    }
