"""`python -m rmt_dist.evaluate CHECKPOINT_OR_RUN_DIR --data VAL.beton [key=value ...]`.

Top-1/top-5 of a checkpoint's model and (when it has one) its EMA over a val beton,
distributed when launched with torchrun (every rank reads the consolidated weights and
scores its share of the val set). key=value overrides apply to the checkpoint's resolved
config (e.g. data.eval_batch_size=256 data.img_size=256 data.crop_pct=1.0). Prints one
JSON object; exit codes: 0 ok, 1 failure, 2 bad command line or input.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import EXIT_BAD_INPUT


def evaluate_checkpoint(source: str, data: str, overrides: list[str]) -> dict[str, float | str]:
    """Collective when a process group is (or can be) set up; returns the same dict on every rank."""
    import dataclasses

    from rmt_dist.checkpoint_format.dirs import resolve_checkpoint
    from rmt_dist.config import ConfigError
    from rmt_dist.config.load import apply_overrides, build
    from rmt_dist.data import build_eval_loader
    from rmt_dist.engine.distributed import init_distributed, shutdown_distributed
    from rmt_dist.engine.evaluation import evaluate
    from rmt_dist.models.factory import create
    from rmt_dist.models.weights import checkpoint_config, load_into

    from .config import to_dict

    ckpt = resolve_checkpoint(source)
    cfg = checkpoint_config(ckpt)
    tree = to_dict(cfg)
    apply_overrides(tree, {}, overrides)
    try:
        cfg = build(type(cfg), tree, {})
    except ConfigError as e:
        raise ValueError(str(e)) from None
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, val=data))
    info = init_distributed(cfg.strategy.backend)
    try:
        loader = build_eval_loader(cfg, rank=info.rank, world_size=info.world_size, device=info.device)
        results: dict[str, float | str] = {}
        for prefix, ema in (("eval", False), ("eval_ema", True)):
            if ema and not cfg.ema.enabled:
                continue
            model = load_into(create(cfg.model, mix_token=cfg.tokenlabel.mix_token), ckpt, ema=ema)
            model.to(info.device).eval()
            results.update(evaluate(model, loader, info.device, prefix))
        results["checkpoint"] = str(ckpt)
        return results
    finally:
        shutdown_distributed(info)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rmt_dist.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a run dir (newest complete checkpoint) or a checkpoints/step_* dir")
    p.add_argument("--data", required=True, help="validation .beton")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the checkpoint's config")
    try:
        args = p.parse_intermixed_args(argv)
    except SystemExit as e:
        return 0 if e.code in (0, None) else EXIT_BAD_INPUT
    try:
        results = evaluate_checkpoint(args.source, args.data, args.overrides)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
