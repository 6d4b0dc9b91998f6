"""Checks of a resolved recipe's inputs, run by a launcher before anything is queued.

A run that would stop at start-up for a bad input (a missing beton, val classes that are
not train's, a token-label store made for other data, a finished run dir or one a live run holds,
`checkpoint.resume=false` over an earlier run, checkpoints of another strategy or model...) should stop
here, on the login node, in seconds, rather than after hours in the queue. Each check
gives one `Check`: ok with a short summary, or the one-line reason it would fail and the
fix. `launch/slurm.py --dry-run` prints them all, then exits 2 with the first failure's line when
one fails; a submission refuses on the first failure (exit 2). launch/local.py runs the
run-dir checks (`run_dir_checks`) before it starts any rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..config.schema import Config, DerivedConfig
from .errors import LaunchError


class PreflightError(LaunchError):
    """A check failed; the message is that check's one line."""


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str  # ok: what was found; failed: why, and the fix

    def line(self) -> str:
        return (
            f"ok          {self.name}: {self.detail}"
            if self.ok
            else f"would fail  {self.name}: {self.detail}"
        )


def _beton(path: str | None, key: str) -> tuple[Check, dict | None]:
    from ..data.errors import DataError
    from ..data.verify import check_beton

    try:
        meta = check_beton(path, key)
    except DataError as e:
        return Check(key, False, str(e).removeprefix(f"{key}: ")), None
    n, c = meta.get("num_samples"), meta.get("num_classes", len(meta.get("classes", {})))
    return Check(key, True, f"{path} ({n} samples, {c} classes)"), meta


def _class_map(train: dict, val: dict, val_path: str, train_path: str) -> Check:
    if train.get("classes") == val.get("classes"):
        return Check("data.val classes", True, "same class map as data.train")
    tc, vc = train.get("classes") or {}, val.get("classes") or {}
    diff = sorted(set(tc.items()) ^ set(vc.items()))[:1]
    where = f"e.g. {diff[0][0]!r}" if diff else "different order"
    return Check(
        "data.val classes",
        False,
        f"{val_path} has a class map that differs from data.train's ({len(vc)} vs {len(tc)} classes, "
        f"{where}); re-convert val with python -m rmt_dist.data.convert VAL_SRC {val_path} "
        f"--classes {train_path}.meta.json",
    )


def _num_classes(cfg: Config, train: dict) -> Check:
    n = train.get("num_classes", len(train.get("classes", {})))
    if n == cfg.model.num_classes:
        return Check("model.num_classes", True, f"{n}, as data.train")
    return Check(
        "model.num_classes",
        False,
        f"{cfg.model.num_classes} but data.train has {n} classes; set model.num_classes={n}",
    )


def _token_labels(cfg: Config) -> Check:
    from ..data.errors import DataError
    from ..tokenlabel.store import TokenLabelStore, TokenLabelStoreError

    assert cfg.tokenlabel.store is not None  # validate() requires it when token labeling is on
    try:
        store = TokenLabelStore(cfg.tokenlabel.store, beton=cfg.data.train, num_classes=cfg.model.num_classes)
    except (TokenLabelStoreError, DataError) as e:
        return Check("tokenlabel.store", False, str(e))
    m = store.meta
    return Check(
        "tokenlabel.store",
        True,
        f"{cfg.tokenlabel.store} (complete, {m.num_samples} samples, {m.map_h}x{m.map_w} top-{m.topk}, "
        f"made for this beton)",
    )


def _init_checkpoint(path: str) -> Check:
    if not os.path.exists(path):
        return Check(
            "model.init_checkpoint",
            False,
            f"{path} does not exist; fix the path or set model.init_checkpoint=null for a random init",
        )
    try:
        from ..models.weights import read_weights  # the trainer's reader: files, run and checkpoint dirs

        sd = read_weights(path)
    except Exception as e:  # any reason it cannot be read is a reason the job would stop
        return Check(
            "model.init_checkpoint",
            False,
            f"{path} does not load ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "point it at a weights file (safetensors, .pth) or a run/checkpoint dir of this project",
        )
    return Check("model.init_checkpoint", True, f"{path} ({len(sd)} tensors)")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _run_dir(run_dir: Path, resume: bool = True) -> Check:
    from .rundir import check_not_finished

    try:
        check_not_finished(run_dir)
    except LaunchError as e:
        return Check("run.dir", False, str(e))
    if run_dir.exists() and not run_dir.is_dir():
        return Check("run.dir", False, f"{run_dir} is a file, not a directory; pass run.dir=<a directory>")
    base = _nearest_existing(run_dir)
    if not os.access(base, os.W_OK | os.X_OK):
        return Check(
            "run.dir",
            False,
            f"{run_dir} is not writable ({base} is read-only for this user); "
            "pass run.dir=<a writable directory>",
        )
    state = (
        ("exists, will resume from its newest complete checkpoint" if resume else "exists, holds checkpoints")
        if (run_dir / "checkpoints").is_dir()
        else "new"
        if not run_dir.exists()
        else "exists, no checkpoint yet"
    )
    return Check("run.dir", True, f"{run_dir} (writable, {state})")


def _lock(run_dir: Path) -> Check:
    from .rundir import check_not_in_use

    try:
        check_not_in_use(run_dir)
    except LaunchError as e:
        return Check("run.lock", False, str(e))
    return Check("run.lock", True, "no live run holds the run dir")


def _resume(cfg: Config, run_dir: Path) -> Check:
    """What the job's start would refuse about the run dir's checkpoints, asked torch-free:
    resume=false over an earlier run, or a newest checkpoint of another strategy or model."""
    from ..checkpoint_format.dirs import (
        layout_mismatch,
        model_mismatch,
        newest_complete,
        read_train_state,
        strategy_identity,
    )
    from .rundir import check_fresh_start

    try:
        check_fresh_start(run_dir, cfg.checkpoint.resume)
    except LaunchError as e:
        return Check("checkpoint.resume", False, str(e))
    if not cfg.checkpoint.resume:
        return Check("checkpoint.resume", True, "false; the run dir holds no earlier run")
    newest = newest_complete(run_dir / "checkpoints")
    if newest is None:
        return Check("checkpoint.resume", True, "nothing to resume yet: the run starts at step 0")
    try:
        saved = read_train_state(newest)
    except (OSError, ValueError):  # invalid_reason read it a moment ago; the job will say more
        return Check("checkpoint.resume", True, f"resumes from {newest}")
    mine = strategy_identity(cfg.strategy.name, cfg.strategy.zero_stage)
    why = layout_mismatch(saved, mine) or model_mismatch(newest, saved, cfg.model)
    if why:  # the same line the job's resume would stop with (engine/trainer.py _mismatch)
        return Check("checkpoint.resume", False, f"checkpoint {newest} {why}")
    return Check("checkpoint.resume", True, f"resumes from {newest} (step {saved.get('step', '?')})")


def run_dir_checks(cfg: Config) -> list[Check]:
    """The run dir's checks: not FINISHED and writable, not held by a live run, and its
    checkpoints resumable as the recipe asks. Torch-free and quick."""
    run_dir = Path(cfg.run.dir).resolve()
    checks = [_run_dir(run_dir, cfg.checkpoint.resume)]
    if run_dir.is_dir():
        checks += [_lock(run_dir), _resume(cfg, run_dir)]
    return checks


def _batch(cfg: DerivedConfig, train: dict) -> Check:
    d, ws, accum = cfg.data, cfg.derived.world_size, cfg.optim.accum_steps
    assert ws is not None, "derive(cfg) sets the world size"
    n = int(train.get("num_samples", 0))
    per_rank = n // ws
    steps = per_rank // d.batch_size if d.drop_last else -(-per_rank // d.batch_size)
    if steps // accum < 1:
        return Check(
            "data.batch_size",
            False,
            f"{n} training samples give {steps} batches per rank per epoch (data.batch_size "
            f"{d.batch_size} x {ws} ranks), fewer than optim.accum_steps={accum}; lower data.batch_size "
            "or slurm.nodes",
        )
    mixing = d.mixup > 0 or d.cutmix > 0
    if mixing and d.batch_size % 2:
        return Check(
            "data.batch_size",
            False,
            f"{d.batch_size} is odd, but mixup/cutmix pair each image with the reversed batch; "
            f"set data.batch_size={d.batch_size + 1}",
        )
    return Check(
        "data.batch_size",
        True,
        f"{d.batch_size} per rank x {ws} ranks x {accum} accumulation = {cfg.derived.global_batch} "
        f"per step; {steps // accum} steps per epoch",
    )


def derived_check(cfg: DerivedConfig, steps_per_epoch: int | None) -> Check:
    d, o = cfg.derived, cfg.optim
    text = (
        f"world size {d.world_size}, global batch {d.global_batch}, peak lr {d.lr:.6g}, "
        f"EMA decay per step {d.ema_decay:.8g}, {o.epochs}+{o.cooldown_epochs} epochs"
    )
    if steps_per_epoch:
        total = (o.epochs + o.cooldown_epochs) * steps_per_epoch
        text += f", {o.warmup_epochs * steps_per_epoch} warm-up steps, {total} steps in all"
    if not (d.lr > 0 and 0 < d.ema_decay < 1):
        return Check(
            "derived",
            False,
            f"{text}: the peak lr must be > 0 and the EMA decay in (0, 1); check optim.lr and ema.decay",
        )
    return Check("derived", True, text)


def run_checks(cfg: DerivedConfig) -> list[Check]:
    """Every check for `cfg` (derived for its world size); never raises for a bad input."""
    # The run dir first: a finished run is refused whatever else is wrong.
    checks: list[Check] = run_dir_checks(cfg)
    train_check, train = _beton(cfg.data.train, "data.train")
    checks.append(train_check)
    if cfg.data.val:
        val_check, val = _beton(cfg.data.val, "data.val")
        checks.append(val_check)
        if train is not None and val is not None:
            checks.append(_class_map(train, val, cfg.data.val, cfg.data.train))
    if train is not None:
        checks.append(_num_classes(cfg, train))
    if cfg.tokenlabel.enabled:
        checks.append(_token_labels(cfg))
    if cfg.model.init_checkpoint:
        checks.append(_init_checkpoint(cfg.model.init_checkpoint))
    steps = None
    if train is not None:
        batch = _batch(cfg, train)
        checks.append(batch)
        if batch.ok:
            assert cfg.derived.world_size is not None  # _batch passed
            per_rank = int(train.get("num_samples", 0)) // cfg.derived.world_size
            steps = (per_rank // cfg.data.batch_size) // cfg.optim.accum_steps
    checks.append(derived_check(cfg, steps))
    return checks


def first_failure(checks: list[Check]) -> PreflightError | None:
    """The error a submission would stop with: the first failed check's line."""
    return next((PreflightError(f"{c.name}: {c.detail}") for c in checks if not c.ok), None)


def require(cfg: DerivedConfig, checks: list[Check] | None = None) -> list[Check]:
    """`run_checks` (or the given ones), raising PreflightError with the first failure's line."""
    checks = run_checks(cfg) if checks is None else checks
    if error := first_failure(checks):
        raise error
    return checks
