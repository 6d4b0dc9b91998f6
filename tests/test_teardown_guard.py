"""A rank whose teardown hangs after training (seen with gloo: the main thread blocked in
native code once its peer exited) ends itself with the run's exit code, so a finished SLURM
job does not sit COMPLETING until its time limit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import logging, sys, threading, time
logging.basicConfig(level=logging.INFO)
from rmt_dist.engine.preempt import guard_teardown
disarm = guard_teardown(75)
if sys.argv[1] == "hang":
    threading.Event().wait()  # a teardown that never returns
else:
    disarm()
    time.sleep(1.0)  # past the timeout: a disarmed guard must not fire
    print("exited normally")
"""


def run_script(mode: str, timeout_s: str | None) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k != "RMT_DIST_TEARDOWN_TIMEOUT_S"}
    env["PYTHONPATH"] = str(ROOT)
    if timeout_s is not None:
        env["RMT_DIST_TEARDOWN_TIMEOUT_S"] = timeout_s
    start = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, env=env, timeout=60
    )
    return r, time.monotonic() - start


def test_a_hung_teardown_ends_the_rank_with_its_exit_code():
    r, took = run_script("hang", "0.5")
    assert r.returncode == 75, r.stderr
    assert "teardown after training did not finish in" in r.stderr and "exiting with 75 now" in r.stderr
    assert took < 30


def test_a_finished_teardown_disarms_the_guard():
    r, _ = run_script("ok", "0.5")
    assert r.returncode == 0 and "exited normally" in r.stdout, r.stderr


def test_no_guard_without_the_launchers_variable():
    """A process that merely calls run() (a test, a notebook) is never ended by it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, "hang"],
        env={
            **{k: v for k, v in os.environ.items() if k != "RMT_DIST_TEARDOWN_TIMEOUT_S"},
            "PYTHONPATH": str(ROOT),
        },
    )
    try:
        time.sleep(3.0)
        assert proc.poll() is None, "the guard fired without RMT_DIST_TEARDOWN_TIMEOUT_S"
    finally:
        proc.kill()
        proc.wait()
