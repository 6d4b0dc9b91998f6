"""`python -m rmt_dist.export RUN_DIR_OR_CKPT OUT.safetensors [--ema]`: consolidated weights.

Reads the newest complete checkpoint of a run dir (or the given checkpoint dir) without
a process group, reshards it to full tensors and writes a safetensors file whose names
are the model's own, so `timm.create_model(name, num_classes=...)` followed by
`load_state_dict(safetensors.torch.load_file(OUT))` (or `pretrained_cfg_overlay=
dict(file=OUT)`) gives the trained model. `--ema` exports the EMA weights instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

EXIT_USAGE = 2


def _checkpoint_config(ckpt: Path):
    from rmt_dist.config import load_resolved

    for candidate in (ckpt / "config.yaml", ckpt.parent.parent / "config.yaml"):
        if candidate.is_file():
            return load_resolved(candidate)
    raise ValueError(f"no config.yaml beside checkpoint {ckpt} (expected it in the checkpoint or its run dir)")


def _template(cfg) -> dict[str, torch.Tensor]:
    from rmt_dist.engine.trainer import build_model

    model = build_model(cfg)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _load_dcp(ckpt: Path, template: dict, key: str) -> dict[str, torch.Tensor]:
    import warnings

    import torch.distributed.checkpoint as dcp

    state = {key: template}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(ckpt / "dcp"), no_dist=True)
    return state[key]


def _load_deepspeed(ckpt: Path, template: dict, ema: bool, zero_stage: int) -> dict[str, torch.Tensor]:
    if not ema:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag="ds")
        return {k: sd[k].to(template[k].dtype) for k in template}
    if zero_stage != 3:
        return torch.load(ckpt / "ema.pt", map_location="cpu", weights_only=True)
    from rmt_dist.engine.parallel.zero3_layout import join_partitions

    parts = [torch.load(f, map_location="cpu", weights_only=True) for f in sorted(ckpt.glob("ema_rank_*.pt"))]
    if not parts:
        raise ValueError(f"{ckpt}: no ema_rank_*.pt files (was the run trained with ema.enabled=false?)")
    out = {}
    for name, full in template.items():
        if parts[0][name].shape == full.shape:  # buffers (and unpartitioned tensors) are whole on every rank
            out[name] = parts[0][name]
        else:  # ZeRO-3 partitions (rmt_dist.engine.parallel.zero3_layout)
            out[name] = join_partitions([p[name] for p in parts], full.numel(), full.shape)
    return out


def load_consolidated(path: str | os.PathLike, ema: bool = False) -> dict[str, torch.Tensor]:
    """Full CPU tensors of the model (or its EMA) from a run dir or a checkpoint dir."""
    import json

    from rmt_dist.engine.checkpoint import TRAIN_STATE, resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    cfg = _checkpoint_config(ckpt)
    state = json.loads((ckpt / TRAIN_STATE).read_text())
    template = _template(cfg)
    if state.get("strategy") == "deepspeed":
        return _load_deepspeed(ckpt, template, ema, state.get("zero_stage") or 0)
    if ema and not cfg.ema.enabled:
        raise ValueError(f"{ckpt} has no EMA: the run had ema.enabled=false (export without --ema)")
    return _load_dcp(ckpt, template, "ema" if ema else "model")


def save_safetensors(weights: dict[str, torch.Tensor], out: str | os.PathLike, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rmt_dist.export", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a run dir (newest complete checkpoint) or a checkpoints/step_* dir")
    p.add_argument("out", help="output .safetensors file")
    p.add_argument("--ema", action="store_true", help="export the EMA weights")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return 0 if e.code in (0, None) else EXIT_USAGE
    if not args.out.endswith(".safetensors"):
        print(f"error: output {args.out!r} must end in .safetensors", file=sys.stderr)
        return EXIT_USAGE
    try:
        from rmt_dist.engine.checkpoint import resolve_checkpoint

        ckpt = resolve_checkpoint(args.source)
        weights = load_consolidated(ckpt, ema=args.ema)
        cfg = _checkpoint_config(ckpt)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    save_safetensors(weights, args.out, {"model": cfg.model.name, "num_classes": str(cfg.model.num_classes),
                                         "checkpoint": str(ckpt), "ema": str(args.ema)})
    print(f"wrote {args.out}: {len(weights)} tensors from {ckpt}{' (EMA)' if args.ema else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
