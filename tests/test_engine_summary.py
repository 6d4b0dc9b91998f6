"""The end-of-run accuracy summary: final and best top-1 for model and EMA, and the official
max_accuracy (best epoch of max(model, EMA)), over every eval of the run, requeues included."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

from rmt_dist.engine.reporting import Reporter
from rmt_dist.engine.summary import eval_history, format_summary, summarize
from rmt_dist.engine.train_state import TrainState


def ev(epoch: int, model: float | None, ema: float | None = None) -> dict:
    rec = {"step": 100 * (epoch + 1), "epoch": epoch, "eval/top1": model, "eval/top5": 99.0}
    if ema is not None:
        rec["eval_ema/top1"] = ema
    return rec


# Model peaks at epoch 2 and ends lower; the EMA peaks at epoch 3, above the model's best,
# and ends below its own best: every one of the five numbers is different.
RUN = [
    ev(0, 50.0, 10.0),
    {"step": 150, "epoch": 1, "loss": 2.0, "lr": 1e-3},
    ev(1, 70.0, 60.0),
    ev(2, 80.0, 78.0),
    ev(3, 79.0, 81.5),
    ev(4, 78.5, 81.0),
]


def test_final_and_best_for_model_and_ema_and_the_best_of_both():
    s = summarize(RUN)
    assert (s.final.value, s.final.epoch) == (78.5, 4)
    assert (s.best.value, s.best.epoch) == (80.0, 2)
    assert (s.final_ema.value, s.final_ema.epoch) == (81.0, 4)
    assert (s.best_ema.value, s.best_ema.epoch) == (81.5, 3)
    b = s.best_of_both
    assert (b.value, b.epoch, b.step, b.source) == (81.5, 3, 400, "ema")


def test_best_of_both_can_come_from_the_model_and_ties_keep_the_earliest_eval():
    s = summarize([ev(0, 60.0, 59.0), ev(1, 75.0, 70.0), ev(2, 75.0, 74.0), ev(3, 74.0, 74.5)])
    assert (s.best.value, s.best.epoch) == (75.0, 1)
    assert (s.best_of_both.value, s.best_of_both.epoch, s.best_of_both.source) == (75.0, 1, "model")


def test_records_are_taken_in_step_order_and_null_values_are_skipped():
    s = summarize(list(reversed(RUN)) + [ev(5, None, None)])
    assert s.final.epoch == 4 and s.best_ema.value == 81.5


def test_the_log_line_names_every_value_with_its_1_based_epoch():
    line = format_summary(summarize(RUN))
    assert line == (
        "final top-1 78.50 (epoch 5), best 80.00 (epoch 3), final EMA 81.00 (epoch 5), "
        "best EMA 81.50 (epoch 4), best of max(model, EMA) 81.50 (ema, epoch 4) [the official max_accuracy]"
    )


def test_without_ema_only_the_model_is_reported_and_without_evals_nothing():
    line = format_summary(summarize([ev(0, 40.0), ev(1, 45.0), ev(2, 44.0)]))
    assert line == "final top-1 44.00 (epoch 3), best 45.00 (epoch 2)"
    assert format_summary(summarize([{"step": 1, "epoch": 0, "loss": 1.0}])) is None


def test_history_is_read_from_metrics_jsonl_skipping_cut_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RUN) + '{"step": 600, "epoch": 5, "eval/t')
    assert eval_history(path, []) == [r for r in RUN if "eval/top1" in r]
    fallback = [ev(0, 1.0)]
    assert eval_history(tmp_path / "missing.jsonl", fallback) is fallback
    assert eval_history(None, fallback) is fallback


def test_trainer_summary_covers_evals_from_before_a_resume(tmp_path, caplog):
    """A requeued run holds only the evals since its resume in memory; metrics.jsonl has them all."""
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RUN))
    after_resume = RUN[-1:]  # the trainer's in-memory list after resuming at epoch 4
    report = Reporter(
        is_main=True,
        total_steps=500,
        log_every=1,
        metrics=SimpleNamespace(path=path),
        perf=SimpleNamespace(start_window=lambda: None),
    )
    report.start(400)  # resumed at step 400
    state = TrainState(step=500)
    with caplog.at_level(logging.INFO, logger="rmt_dist.train"):
        report.summary(state, seconds=1.0, eval_results=after_resume, last_saved_step=500)
    text = caplog.text
    assert "best 80.00 (epoch 3)" in text and "best EMA 81.50 (epoch 4)" in text
