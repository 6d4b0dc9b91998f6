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
from typing import TYPE_CHECKING

from .errors import EXIT_BAD_INPUT

if TYPE_CHECKING:  # torch is imported where weights are read: `--help` answers without it
    import torch


def load_consolidated(path: str | os.PathLike, ema: bool = False) -> dict[str, torch.Tensor]:
    """Full CPU tensors of the model (or its EMA) from a run dir or a checkpoint dir."""
    from rmt_dist.models.weights import read_checkpoint_dir

    return read_checkpoint_dir(path, ema=ema)[1]


def save_safetensors(
    weights: dict[str, torch.Tensor], out: str | os.PathLike, metadata: dict[str, str]
) -> None:
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
        return 0 if e.code in (0, None) else EXIT_BAD_INPUT
    if not args.out.endswith(".safetensors"):
        print(f"error: output {args.out!r} must end in .safetensors", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        from rmt_dist.checkpoint_format.dirs import resolve_checkpoint
        from rmt_dist.models.weights import checkpoint_config, read_weights

        ckpt = resolve_checkpoint(args.source)
        weights = read_weights(ckpt, ema=args.ema)
        cfg = checkpoint_config(ckpt)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    save_safetensors(
        weights,
        args.out,
        {
            "model": cfg.model.name,
            "num_classes": str(cfg.model.num_classes),
            "checkpoint": str(ckpt),
            "ema": str(args.ema),
        },
    )
    print(f"wrote {args.out}: {len(weights)} tensors from {ckpt}{' (EMA)' if args.ema else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
