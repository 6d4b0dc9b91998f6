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

import logging
import os
import signal
import threading
from collections.abc import Callable

from ..errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_PREEMPTED  # noqa: F401  (re-exported)
from ..launching.dist_env import TEARDOWN_TIMEOUT_ENV
from ..launching.rundir import pid_alive

log = logging.getLogger("rmt_dist.train")


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


ENV_LAUNCHER_PID = "RMT_DIST_LAUNCHER_PID"


def watch_launcher(poll_s: float = 1.0, grace_s: float = 120.0) -> Callable[[], None]:
    """Make this rank die with whoever launched it; returns a function that stops watching.

    torchrun's and our launchers' ranks would otherwise train on, unsupervised, after the
    launcher was killed (kill -9 of its process group does not reach them). A thread
    polls the parent pid (it changes when the parent dies) and $RMT_DIST_LAUNCHER_PID
    (set by launch/local.py); when either is gone it requests a stop, so the ranks save
    together and exit 75, and after `grace_s` more it ends the process regardless (a
    collective may wait forever for a peer that is gone).

    Only ranks with a launcher are watched (launch/local.py's, or torchrun's, which sets
    TORCHELASTIC_RUN_ID): a bare `nohup python -m rmt_dist.train ... &` is re-parented
    when its shell exits, and that is no reason to stop it."""
    parent = os.getppid()
    launcher = int(os.environ.get(ENV_LAUNCHER_PID) or 0)
    if not launcher and "TORCHELASTIC_RUN_ID" not in os.environ:
        return lambda: None
    done = threading.Event()

    def gone() -> str | None:
        if parent > 1 and os.getppid() != parent:
            return f"its parent process (pid {parent})"
        if launcher and not pid_alive(launcher):
            return f"the launcher (pid {launcher})"
        return None

    def loop() -> None:
        while not done.wait(poll_s):
            who = gone()
            if who:
                log.error(
                    "error: %s is gone: stopping this rank (it saves a checkpoint first when "
                    "checkpoint.save_on_signal); relaunch to resume",
                    who,
                )
                request_stop(f"{who} is gone")
                if not done.wait(grace_s):
                    os._exit(EXIT_FAILED)
                return

    threading.Thread(target=loop, name="rmt-dist-launcher-watch", daemon=True).start()
    return done.set


def guard_teardown(rc: int) -> Callable[[], None]:
    """End this process with `rc` if the teardown that follows training hangs; returns the
    function that disarms the guard once the teardown is done.

    Freeing the model, loaders and gloo process group after the last step has been seen to
    hang a rank forever (torch's teardown: the main thread blocked in native code after its
    peer exited), which keeps a finished SLURM job COMPLETING until its time limit. Armed
    only where a launcher set $RMT_DIST_TEARDOWN_TIMEOUT_S for a rank process of its own
    (launching/task.py, launch/local.py), never in a process that merely calls run()."""
    try:
        timeout_s = float(os.environ.get(TEARDOWN_TIMEOUT_ENV) or 0)
    except ValueError:
        timeout_s = 0.0
    if timeout_s <= 0:
        return lambda: None

    def stuck() -> None:
        log.warning(
            "teardown after training did not finish in %.0f s (a known torch/gloo hang); exiting with %d now",
            timeout_s,
            rc,
        )
        for handler in logging.getLogger().handlers + log.handlers:
            handler.flush()
        os._exit(rc)

    timer = threading.Timer(timeout_s, stuck)
    timer.daemon = True
    timer.start()
    return timer.cancel
