"""Stop requests: SIGTERM/SIGUSR2 (preemption, SLURM's time-limit warning) or a direct call.

A signal only sets a flag; the trainer checks it at every step boundary and all ranks
agree (one all-reduce) before the coordinated checkpoint and the clean exit, so a
signal that reaches one rank stops them all at the same step.

Exit codes of `rmt_dist.train.main`: 0 finished (or stopped at run.stop_after_steps),
EXIT_PREEMPTED (75, EX_TEMPFAIL) stopped by a signal or request_stop() after the save,
1 a failure (including run.max_bad_steps consecutive non-finite steps), 2 bad input (recipe,
data, token-label store), reported in one line before training starts.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_PREEMPTED = 75

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)

_stop = threading.Event()
_reason: list[str] = []


def request_stop(reason: str = "stop requested") -> None:
    """Ask the running trainer to save (if checkpoint.save_on_signal) and exit at the next step.

    Safe to call from a signal handler or another thread (e.g. the SLURM launcher's)."""
    _reason[:] = [reason]
    _stop.set()


def stop_requested() -> bool:
    return _stop.is_set()


def stop_reason() -> str:
    return _reason[0] if _reason else ""


def clear_stop() -> None:
    _stop.clear()
    _reason.clear()


def install_signal_handlers() -> Callable[[], None]:
    """Route SIGTERM/SIGUSR2 to request_stop; returns a function restoring the old handlers.

    Only the main thread may install handlers; elsewhere this is a no-op (the caller is
    then expected to call request_stop itself)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {}
    for sig in STOP_SIGNALS:
        previous[sig] = signal.signal(sig, lambda s, _f: request_stop(f"signal {signal.Signals(s).name}"))

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
