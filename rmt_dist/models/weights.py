"""The one reader of model weights: `read_weights(source)` -> a state dict with this model's names.

Source kinds, told apart by the path:
  a directory        a run dir (its newest complete checkpoint), its checkpoints/ dir, or one
                     checkpoints/step_* dir of this project: the sharded weights (dcp/ for
                     ddp/fsdp, ds/ for deepspeed) consolidated to full CPU tensors; `ema=True`
                     reads the EMA instead
  *.safetensors      a flat file (what `python -m rmt_dist.export` writes; timm hub files)
  any other file     a torch file (.pth/.pt/.bin): a state dict, or one wrapped the way training
                     scripts save them: {"model", "model_ema", "optimizer", "args", ...}
                     (qhfan/RMT classfication_release/main.py), {"state_dict", "state_dict_ema",
                     "args", ...} (timm's CheckpointSaver, qhfan/RMT
                     classification_token_label_release/util/checkpoint_saver.py), {"module": ...};
                     `ema=True` takes "model_ema"/"state_dict_ema"/"ema"
Keys lose DDP/compile prefixes (`module.`, `_orig_mod.`); for an RMT model the released
`Relpos.angle/decay` buffers are checked against the recomputed ones and dropped
(`rmt.checkpoint_filter_fn`). Each read logs one line saying what it read. Errors are one
line (`WeightsError`, a ValueError) naming the path and what was found against what was expected.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import BadInputError

log = logging.getLogger(__name__)

_MODEL_KEYS = ("model", "state_dict", "module")
_EMA_KEYS = ("model_ema", "state_dict_ema", "ema", "module_ema")
_PREFIXES = ("module.", "_orig_mod.")


class WeightsError(BadInputError, ValueError):
    """Weights that cannot be read, or do not fit the model: one line naming the source."""


def read_weights(
    source: str | os.PathLike, ema: bool = False, model: nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """State dict of `source` (any kind above); with `model`, filtered to that model's names
    (without one, only the DDP/compile prefixes are stripped)."""
    path = Path(source)
    if path.is_dir():
        kind, sd = read_checkpoint_dir(path, ema=ema)
    elif path.is_file():
        kind, sd = (
            _read_safetensors(path, ema) if path.suffix == ".safetensors" else _read_torch_file(path, ema)
        )
    else:
        raise WeightsError(
            f"weights {str(path)!r} do not exist (expected a .pth/.pt/.safetensors file or a run dir)"
        )
    n_read = len(sd)
    sd = _filter(sd, model, path)
    dropped = n_read - len(sd)
    log.info(
        "weights: %s %s -> %d tensors%s%s",
        kind,
        path,
        len(sd),
        " (EMA)" if ema else "",
        f", {dropped} recomputed buffers/unused heads dropped" if dropped else "",
    )
    return sd


def load_into(
    model: nn.Module,
    source: str | os.PathLike,
    ema: bool = False,
    *,
    new_head_ok: bool = False,
    what: str = "weights",
    classes_of: str = "the model",
) -> nn.Module:
    """`read_weights` + a strict load into `model`; `new_head_ok` keeps the model's own (fresh)
    classifier when the checkpoint's has another class count (fine-tuning on a new dataset).
    `what` and `classes_of` name the source and the class count in errors."""
    sd = read_weights(source, ema=ema, model=model)
    ours = model.state_dict()
    head = _head_keys(model)
    mismatched = [k for k in sd if k in ours and tuple(sd[k].shape) != tuple(ours[k].shape)]
    if new_head_ok and mismatched and set(mismatched) <= head:
        log.info(
            "%s: %s has a classifier of another size (%s %s, model %s): the model's head is kept fresh",
            what,
            source,
            mismatched[0],
            tuple(sd[mismatched[0]].shape),
            tuple(ours[mismatched[0]].shape),
        )
        sd = {k: v for k, v in sd.items() if k not in mismatched}
        mismatched = []
    missing = [k for k in ours if k not in sd]
    allowed_missing = {k for k in missing if new_head_ok and k in head}
    missing = [k for k in missing if k not in allowed_missing]
    unexpected = [k for k in sd if k not in ours]
    if missing or unexpected or mismatched:
        name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
        parts = []
        if mismatched and set(mismatched) <= head:
            k = mismatched[0]
            parts.append(f"it has {sd[k].shape[0]} classes but {classes_of} has {ours[k].shape[0]}")
        elif mismatched:
            parts.append(
                f"{len(mismatched)} of other shape ({mismatched[0]} {tuple(sd[mismatched[0]].shape)}, "
                f"model {tuple(ours[mismatched[0]].shape)})"
            )
        if missing:
            parts.append(f"{len(missing)} missing ({_compact(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_compact(unexpected)})")
        raise WeightsError(
            f"{what} {str(source)!r} do not fit model {name}: "
            + "; ".join(parts)
            + ": is it a checkpoint of this variant and class count?"
        )
    if allowed_missing:
        log.info(
            "%s: %s has no %s: the model's head is kept fresh",
            what,
            source,
            _compact(sorted(allowed_missing)),
        )
    model.load_state_dict(sd, strict=not allowed_missing)
    return model


def read_checkpoint_dir(path: str | os.PathLike, ema: bool = False) -> tuple[str, dict[str, torch.Tensor]]:
    """(kind, full CPU tensors) of the model or its EMA from a run dir or checkpoint dir of this
    project, read without a process group."""
    from rmt_dist.checkpoint_format.dirs import TRAIN_STATE, resolve_checkpoint

    try:
        ckpt = resolve_checkpoint(path)
    except ValueError as e:
        raise WeightsError(str(e)) from None
    cfg = checkpoint_config(ckpt)
    state = json.loads((ckpt / TRAIN_STATE).read_text())
    from .factory import create

    template = {
        k: v.detach().clone()
        for k, v in create(cfg.model, mix_token=cfg.tokenlabel.mix_token).state_dict().items()
    }
    strategy = state.get("strategy") or "ddp"
    kind = f"{strategy} checkpoint (step {state.get('step')})"
    if strategy == "deepspeed":
        return kind, _load_deepspeed(ckpt, template, ema, state.get("zero_stage") or 0)
    if ema and not cfg.ema.enabled:
        raise WeightsError(f"{ckpt} has no EMA: the run had ema.enabled=false (read it without --ema)")
    return kind, _load_dcp(ckpt, template, "ema" if ema else "model")


def checkpoint_config(ckpt: Path):
    """The resolved config a checkpoint was saved with (inside it, or in its run dir)."""
    from rmt_dist.config import load_resolved

    for candidate in (ckpt / "config.yaml", ckpt.parent.parent / "config.yaml"):
        if candidate.is_file():
            return load_resolved(candidate)
    raise WeightsError(
        f"no config.yaml beside checkpoint {ckpt} (expected it in the checkpoint or its run dir)"
    )


# -- files ------------------------------------------------------------------------------


def _read_safetensors(path: Path, ema: bool) -> tuple[str, dict[str, torch.Tensor]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if ema and meta.get("ema") != "True":
        raise WeightsError(
            f"{path} is a .safetensors of one set of weights, not marked as EMA: read it without --ema"
        )
    return "safetensors", load_file(str(path))


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):
            raise WeightsError(f"{path} is not a readable torch file ({_first_line(e)})") from None
        # Both released training scripts store their argparse.Namespace beside the weights: allow that class.
    except (RuntimeError, EOFError, OSError) as e:
        raise WeightsError(f"{path} is not a readable torch file ({_first_line(e)})") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"{path} holds objects besides tensors that torch.load(weights_only=True) refuses "
            f"({_first_line(e)}); if you trust the file, re-save just its state dict"
        ) from None


def _read_torch_file(path: Path, ema: bool) -> tuple[str, dict[str, torch.Tensor]]:
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict")
    wrappers = []
    keys = _EMA_KEYS if ema else _MODEL_KEYS
    while not _is_state_dict(obj):
        key = next((k for k in keys if isinstance(obj.get(k), dict)), None)
        if key is None:
            want = "EMA weights under " if ema else "a state dict or one under "
            raise WeightsError(
                f"{path}: expected {want}{'/'.join(keys)}, found keys {_compact(sorted(obj), 6)}"
            )
        wrappers.append(key)
        obj = obj[key]
        keys = _MODEL_KEYS  # inside a wrapper: {"model": {"state_dict": ...}} and the like
    if ema and not wrappers:
        raise WeightsError(f"{path} is a bare state dict without EMA weights: read it without --ema")
    kind = "torch file" + (f" [{']['.join(wrappers)}]" if wrappers else "")
    return kind, obj


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


# -- names ------------------------------------------------------------------------------


def _filter(sd: dict[str, torch.Tensor], model: nn.Module | None, path: Path) -> dict[str, torch.Tensor]:
    from .rmt import RMT, checkpoint_filter_fn

    if isinstance(model, RMT):
        try:
            return checkpoint_filter_fn(sd, model)
        except ValueError as e:
            raise WeightsError(f"{path}: {e}") from None
    out = {}
    for key, value in sd.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def _head_keys(model: nn.Module) -> set[str]:
    """State-dict names of the classifier(s): the ones a fine-tune to another class count replaces."""
    heads = [(getattr(model, "pretrained_cfg", None) or {}).get("classifier"), "aux_head"]
    return {k for k in model.state_dict() for h in heads if h and (k == h or k.startswith(h + "."))}


def _compact(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... +{len(keys) - n} more" if len(keys) > n else "")


# -- consolidation of this project's sharded checkpoints -------------------------------


def _load_dcp(ckpt: Path, template: dict, key: str) -> dict[str, torch.Tensor]:
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
        if not (ckpt / "ema.pt").is_file():
            raise WeightsError(f"{ckpt}: no ema.pt (was the run trained with ema.enabled=false?)")
        return torch.load(ckpt / "ema.pt", map_location="cpu", weights_only=True)
    from ..checkpoint_format.zero3 import join_partitions

    parts = [torch.load(f, map_location="cpu", weights_only=True) for f in sorted(ckpt.glob("ema_rank_*.pt"))]
    if not parts:
        raise WeightsError(f"{ckpt}: no ema_rank_*.pt files (was the run trained with ema.enabled=false?)")
    out = {}
    for name, full in template.items():
        if parts[0][name].shape == full.shape:  # buffers (and unpartitioned tensors) are whole on every rank
            out[name] = parts[0][name]
        else:  # ZeRO-3 partitions (checkpoint_format/zero3.py)
            out[name] = join_partitions([p[name] for p in parts], full.numel(), full.shape)
    return out
