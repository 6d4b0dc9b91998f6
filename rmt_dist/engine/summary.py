"""The end-of-run accuracy summary: final and best val top-1 of the model and of its EMA.

The official training scripts (qhfan/RMT `classfication_release/main.py` and
`classification_token_label_release/main.py`) evaluate the model and its EMA after every
epoch and keep `max_accuracy = max(max_accuracy, acc1, ema_acc1)`: the best epoch of
max(model, EMA). The published top-1 is that number (the released logs `RMT_log/*.txt`
reproduce every published value this way), so a run is compared with the paper on
`best of max(model, EMA)`, and with itself on the final values.

`summarize` is a pure function of the eval records (as written to metrics.jsonl);
`eval_history` reads them back from the run's metrics.jsonl, which holds every eval of the
run across requeues (the trainer's in-memory list only has those since the last resume).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MODEL_KEY = "eval/top1"
EMA_KEY = "eval_ema/top1"


@dataclass(frozen=True)
class Top1:
    value: float
    epoch: int  # 0-based epoch the eval followed (the record's "epoch"); printed 1-based
    step: int
    source: str = "model"  # "model" or "ema"


@dataclass(frozen=True)
class EvalSummary:
    final: Top1 | None
    best: Top1 | None
    final_ema: Top1 | None
    best_ema: Top1 | None
    best_of_both: Top1 | None  # the official max_accuracy: best epoch of max(model, EMA)


def _value(record: dict, key: str) -> float | None:
    v = record.get(key)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _series(records: list[dict], key: str, source: str) -> list[Top1]:
    return [
        Top1(v, int(r.get("epoch", 0)), int(r.get("step", 0)), source)
        for r in records
        if (v := _value(r, key)) is not None
    ]


def _best(points: list[Top1]) -> Top1 | None:
    """The highest value; on ties the earliest eval."""
    best = None
    for p in points:
        if best is None or p.value > best.value:
            best = p
    return best


def summarize(records: Iterable[dict]) -> EvalSummary:
    """Final and best top-1 of model and EMA, and the best of max(model, EMA), from eval records.

    Records are dicts with "step", "epoch" and "eval/top1" (and "eval_ema/top1" with an
    EMA); others (train records) are ignored, and so are null/non-finite values. Order:
    by step. The final values are those of the last eval."""
    evals = sorted((r for r in records if MODEL_KEY in r or EMA_KEY in r), key=lambda r: r.get("step", 0))
    model, ema = _series(evals, MODEL_KEY, "model"), _series(evals, EMA_KEY, "ema")
    # Per eval, the better of the two (model on a tie), then the best over the run.
    by_step: dict[int, Top1] = {}
    for p in model + ema:
        q = by_step.get(p.step)
        if q is None or p.value > q.value:
            by_step[p.step] = p
    both = [by_step[s] for s in sorted(by_step)]
    return EvalSummary(
        final=model[-1] if model else None,
        best=_best(model),
        final_ema=ema[-1] if ema else None,
        best_ema=_best(ema),
        best_of_both=_best(both),
    )


def format_summary(s: EvalSummary) -> str | None:
    """One line for the run log, or None when the run made no eval."""
    if s.final is None and s.final_ema is None:
        return None

    def at(p: Top1 | None) -> str:
        return "n/a" if p is None else f"{p.value:.2f} (epoch {p.epoch + 1})"

    parts = [f"final top-1 {at(s.final)}", f"best {at(s.best)}"]
    if s.final_ema is not None:
        parts += [f"final EMA {at(s.final_ema)}", f"best EMA {at(s.best_ema)}"]
        b = s.best_of_both
        assert b is not None  # an EMA series makes best_of_both
        parts.append(
            f"best of max(model, EMA) {b.value:.2f} ({b.source}, epoch {b.epoch + 1}) "
            "[the official max_accuracy]"
        )
    return ", ".join(parts)


def eval_history(metrics_path: str | Path | None, fallback: list[dict]) -> list[dict]:
    """Every eval record in the run's metrics.jsonl, or `fallback` when it cannot be read.

    The file is what the run wrote across all its requeues (records past a resumed
    checkpoint were truncated on resume); lines cut by a crash are skipped."""
    if metrics_path is None:
        return fallback
    try:
        lines = Path(metrics_path).read_text().splitlines()
    except OSError:
        return fallback
    records = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and (MODEL_KEY in rec or EMA_KEY in rec):
            records.append(rec)
    return records or fallback


def summary_line(metrics_path: str | Path | None, fallback: list[dict]) -> str | None:
    """The trainer's end-of-run accuracy line (None without evals)."""
    return format_summary(summarize(eval_history(metrics_path, fallback)))
