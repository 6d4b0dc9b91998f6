"""What a run tells its user while it trains: one log line per logged step (with ETA), a
progress bar on a terminal, metrics.jsonl/TensorBoard records, eval lines, the summary.

Rank 0 writes and logs; every rank calls the same methods (the throughput meter
synchronises the device on every rank alike)."""

from __future__ import annotations

import logging
import sys
import time

from .summary import summary_line

log = logging.getLogger("rmt_dist.train")


def format_eta(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds)) if seconds < 86400 else f"{seconds / 86400:.1f}d"


class Reporter:
    def __init__(self, is_main: bool, total_steps: int, log_every: int, metrics, perf):
        self.is_main, self.total_steps, self.log_every = is_main, total_steps, log_every
        self.metrics, self.perf = metrics, perf  # MetricsWriter, PerfMeter
        self.progress = None
        self.start_step, self.t_start = 0, time.perf_counter()

    # -- the loop ---------------------------------------------------------------------
    def start(self, step: int) -> None:
        """Training (re)starts after step `step`."""
        self.progress = self._progress_bar(step)
        self.perf.start_window()
        self.start_step, self.t_start = step, time.perf_counter()

    def step_done(self, stats, state, global_batch: int) -> None:
        self.perf.count(global_batch)
        if self.progress is not None:
            self.progress.update(1)
        if stats.bad and self.is_main:
            log.warning(
                "step %d skipped: non-finite loss or gradient norm (%d in a row)",
                state.step,
                state.bad_streak,
            )
        if state.step % self.log_every == 0 or state.step == self.start_step + 1:
            self._log_train(stats, state)

    def eval_done(self, record: dict, finished_epoch: int, results: dict) -> None:
        self.metrics.write(record)
        if self.is_main:
            log.info(
                "eval after epoch %d (step %d): %s",
                finished_epoch,
                record["step"],
                "  ".join(f"{k} {v:.2f}" for k, v in results.items() if k.endswith(("top1", "top5"))),
            )

    def stop(self) -> float:
        """The loop ended; returns its wall time in seconds."""
        if self.progress is not None:
            self.progress.close()
            self.progress = None
        return time.perf_counter() - self.t_start

    def close(self) -> None:
        self.metrics.close()

    # -- pieces -----------------------------------------------------------------------
    def _log_train(self, stats, state) -> None:
        perf = self.perf.end_window()
        record = {
            "step": state.step,
            "epoch": state.epoch,
            "loss": stats.loss,
            "lr": stats.lr,
            "grad_norm": stats.grad_norm,
            "img_per_s": perf["img_per_s"],
            "skipped_steps": state.bad_steps + state.overflow_steps,
            "bad_steps": state.bad_steps,
            "overflow_steps": state.overflow_steps,
            **{k: v for k, v in perf.items() if k != "img_per_s"},
        }
        self.metrics.write(record, prefix="train/")
        if self.is_main:
            line = (
                f"step {state.step}/{self.total_steps} epoch {state.epoch} loss {stats.loss:.4f} "
                f"lr {stats.lr:.3e} grad_norm {stats.grad_norm:.3f} img/s {perf['img_per_s']:.1f} "
                f"eta {self.eta(state.step)}"
            )
            if self.progress is not None:
                self.progress.set_postfix(loss=f"{stats.loss:.4f}", lr=f"{stats.lr:.2e}")
                self.progress.write(line)
            else:
                log.info(line)

    def eta(self, step: int, now: float | None = None) -> str:
        """Time left at the pace since start(), or "?" before the first step."""
        done = step - self.start_step
        if done <= 0:
            return "?"
        elapsed = (time.perf_counter() if now is None else now) - self.t_start
        return format_eta(elapsed / done * (self.total_steps - step))

    def _progress_bar(self, step: int):
        if not self.is_main or not sys.stderr.isatty():  # batch logs (SLURM): the log lines carry the ETA
            return None
        from tqdm import tqdm

        return tqdm(
            total=self.total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True, leave=False
        )

    def summary(self, state, seconds: float, eval_results: list[dict], last_saved_step: int) -> None:
        """The run's last line: steps and time, skipped steps, accuracy over every eval of the
        run (from metrics.jsonl, so evals before a requeue count), the last checkpoint."""
        if not self.is_main:
            return
        parts = [
            f"{state.step - self.start_step} steps (to step {state.step}/{self.total_steps}) in {seconds:.1f} s",
            f"skipped {state.bad_steps} non-finite + {state.overflow_steps} fp16-overflow steps",
        ]
        if accuracy := summary_line(getattr(self.metrics, "path", None), eval_results):
            parts.append(accuracy)
        if last_saved_step >= 0:
            parts.append(f"last checkpoint at step {last_saved_step}")
        log.info("summary: %s", "; ".join(parts))
