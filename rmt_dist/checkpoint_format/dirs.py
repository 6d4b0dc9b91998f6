"""The on-disk format of a run's checkpoints, read and named without torch.

    run.dir/checkpoints/step_XXXXXXXX/   one directory per saved step
        dcp/                  model, optimizer, EMA (torch.distributed.checkpoint; ddp/fsdp)
        ds/, ema*.pt          DeepSpeed's own checkpoint and the EMA (deepspeed; ZeRO-3's
                              per-rank EMA partitions: zero3.py)
        ds_universal/         ds/ in DeepSpeed's universal format, made at a resume on another world size
        rank_XXXXX.pt         per-rank RNG states and grad scaler
        train_state.json      step, epoch, position in the epoch, counters, world size, strategy, model
        COMPLETE              written last: a manifest {file: {size, crc32}} of everything above
    run.dir/checkpoints/latest   names the newest complete checkpoint

Writing is the engine's (engine/checkpoint.py); this module is what every reader shares:
the engine at resume, the weights reader (models/weights.py), evaluate, export and
`python -m rmt_dist.status`, which must start without importing torch. The resume's refusal
of a checkpoint made for another strategy or model (`layout_mismatch`, `model_mismatch`)
lives here too, so the launchers' pre-flight asks the same question before the queue.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zlib
from pathlib import Path

log = logging.getLogger("rmt_dist.engine.checkpoint")  # the name the engine's warnings always had

METRICS_FILE = (
    "metrics.jsonl"  # run.dir/metrics.jsonl, one JSON record per line (engine/metrics.py writes it)
)
MARKER = "COMPLETE"
POINTER = "latest"
TRAIN_STATE = "train_state.json"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")


def describe_error(e: BaseException) -> str:
    """One line for an error from writing or reading a checkpoint (DCP wraps the real one)."""
    failures = getattr(e, "failures", None)  # torch.distributed.checkpoint's CheckpointException
    if isinstance(failures, dict) and failures:
        rank, wrapped = sorted(failures.items())[0]
        inner = wrapped[0] if isinstance(wrapped, tuple) else wrapped
        return f"{describe_error(inner)} (rank {rank})"
    if isinstance(e, OSError) and e.errno is not None:
        where = f": {e.filename}" if e.filename else ""
        return f"{e.strerror or os.strerror(e.errno)} (errno {e.errno}){where}"
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def file_crc32(path: Path, chunk: int = 8 << 20) -> str:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


def list_files(path: Path) -> list[str]:
    return [str(f.relative_to(path)) for f in sorted(path.rglob("*")) if f.is_file() and f.name != MARKER]


def sizes_manifest(path: Path) -> dict[str, int]:
    """{file: size} (the cheap part of COMPLETE; the checksums are added by the save)."""
    return {name: (path / name).stat().st_size for name in list_files(path)}


def read_manifest(path: Path) -> dict[str, dict]:
    """{file: {"size": n, "crc32": hex or absent}}; older checkpoints stored sizes only."""
    raw = json.loads((path / MARKER).read_text())["files"]
    return {k: (v if isinstance(v, dict) else {"size": v}) for k, v in raw.items()}


def invalid_reason(path: Path) -> str | None:
    """Why `path` cannot be resumed from (cheap: marker, files, sizes), or None."""
    marker = path / MARKER
    if not marker.is_file():
        return "no COMPLETE marker (the save was interrupted)"
    try:
        manifest = read_manifest(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "unreadable COMPLETE marker"
    for name, entry in manifest.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != entry.get("size"):
            return f"{name} has {f.stat().st_size} bytes, the manifest says {entry.get('size')} (truncated or corrupt)"
    try:
        json.loads((path / TRAIN_STATE).read_text())
    except (OSError, ValueError):
        return f"{TRAIN_STATE} is unreadable"
    return None


def checksum_reason(path: Path, names: list[str] | None = None) -> str | None:
    """The first of `names` (default: all) whose crc32 differs from the manifest, or None."""
    try:
        manifest = read_manifest(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "unreadable COMPLETE marker"
    for name in names if names is not None else sorted(manifest):
        want = manifest.get(name, {}).get("crc32")
        if want is None:
            continue
        try:
            got = file_crc32(path / name)
        except OSError as e:
            return f"{name} is unreadable ({describe_error(e)})"
        if got != want:
            return f"{name} fails its checksum (crc32 {got}, the manifest says {want}): the file is corrupt"
    return None


def list_step_dirs(root: Path) -> list[Path]:
    """Checkpoint directories, newest step first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def resume_candidates(root: Path, skipped: dict[Path, str] | None = None) -> list[Path]:
    """Complete checkpoints, newest first; every skipped directory is named in a warning
    (and, with `skipped`, recorded there with its reason)."""
    good = []
    for path in list_step_dirs(root):
        reason = invalid_reason(path)
        if reason:
            log.warning("checkpoint %s skipped: %s", path, reason)
            if skipped is not None:
                skipped[path] = reason
        else:
            good.append(path)
    return good


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A run dir, its checkpoints/ dir, or one checkpoint dir -> the checkpoint dir to read
    (the newest that is complete and passes its checksums)."""
    p = Path(path)
    if (p / MARKER).is_file() or (p / TRAIN_STATE).is_file():
        reason = invalid_reason(p) or checksum_reason(p)
        if reason:
            raise ValueError(f"checkpoint {p} is not usable: {reason}")
        return p
    root = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    for candidate in resume_candidates(root):
        reason = checksum_reason(candidate)
        if reason is None:
            return candidate
        log.warning("checkpoint %s skipped: %s", candidate, reason)
    raise ValueError(f"no complete checkpoint under {p} (expected a run dir or a checkpoints/step_* dir)")


def step_of(path: Path) -> int:
    m = _STEP_DIR.match(path.name)
    assert m is not None, path  # callers pass step_* directories only
    return int(m.group(1))


def read_train_state(path: Path) -> dict:
    return json.loads((path / TRAIN_STATE).read_text())


def newest_complete(root: Path) -> Path | None:
    """The newest checkpoint that passes the cheap checks (the first one a resume tries), quietly."""
    return next((p for p in list_step_dirs(root) if invalid_reason(p) is None), None)


def strategy_identity(name: str, zero_stage: int) -> dict:
    """What train_state.json records about the layout (the strategies' checkpoint_identity()):
    the ZeRO stage only under deepspeed."""
    return {"strategy": name, "zero_stage": zero_stage if name == "deepspeed" else None}


def layout_mismatch(saved: dict, mine: dict) -> str | None:
    """`saved` (a checkpoint's train state) vs `mine` (checkpoint_identity()): the refusal
    line with its fix, or None. Checkpoints do not convert between strategies or ZeRO stages."""
    name, stage = saved.get("strategy"), saved.get("zero_stage")
    if name and name != mine["strategy"]:
        return (
            f"was saved with strategy.name={name} but this run has strategy.name={mine['strategy']}; "
            f"relaunch with strategy.name={name} (checkpoints do not convert between strategies), or "
            "pass run.dir=<new dir>"
        )
    if name and stage is not None and mine.get("zero_stage") is not None and stage != mine["zero_stage"]:
        return (
            f"was saved with strategy.zero_stage={stage} but this run has strategy.zero_stage="
            f"{mine['zero_stage']}; relaunch with strategy.zero_stage={stage}, or pass run.dir=<new dir>"
        )
    return None


# What a resume may not change. `attention` too: the variants share parameter shapes, so their
# weights load into one another without an error and only this record tells them apart.
MODEL_IDENTITY = ("name", "num_classes", "token_label", "attention")


def model_mismatch(path: Path, saved: dict, model) -> str | None:
    """The model checkpoint `path` (train state `saved`) holds vs `model` (a ModelConfig): the
    refusal line with its fix, or None. Older checkpoints name the model (or part of it) in
    config.yaml only."""
    recorded = dict(saved.get("model") or {})
    if any(key not in recorded for key in MODEL_IDENTITY) and (path / "config.yaml").is_file():
        import yaml

        try:
            written = (yaml.safe_load((path / "config.yaml").read_text()) or {}).get("model")
        except (OSError, yaml.YAMLError):
            written = None
        if isinstance(written, dict):
            recorded = {**{k: written[k] for k in MODEL_IDENTITY if k in written}, **recorded}
    for key in MODEL_IDENTITY:
        if key in recorded and recorded[key] != getattr(model, key):
            return (
                f"holds a model with model.{key}={recorded[key]} but this run has model.{key}="
                f"{getattr(model, key)}; relaunch with model.{key}={recorded[key]}, or pass "
                "run.dir=<new dir>"
            )
    return None
