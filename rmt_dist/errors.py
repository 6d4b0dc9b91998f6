"""The project's exit codes and the one error base class every command maps onto them.

Every command's `main()` prints an `RmtDistError` as one line (`error: ...`, naming the bad
value and the fix) and returns its `exit_code`; anything else is a bug and keeps its
traceback. Subclasses stay `ValueError`/`RuntimeError` as before, so callers that catch
those still do.
"""

from __future__ import annotations

import sys

EXIT_OK = 0
EXIT_FAILED = 1  # the input was fine, the work failed (a full disk, a diverged run, a failed save)
EXIT_BAD_INPUT = 2  # a bad recipe, path, file or argument: fix the input, rerunning alone will not help
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal after a save; the launcher requeues


class RmtDistError(Exception):
    """An expected failure with a one-line message; `exit_code` is what a command returns."""

    exit_code = EXIT_FAILED


class BadInputError(RmtDistError):
    """Bad input (exit 2): the message names the bad value and the fix."""

    exit_code = EXIT_BAD_INPUT


def report(e: RmtDistError) -> int:
    """Print `e` as a command's one-line error and return its exit code."""
    print(f"error: {e}", file=sys.stderr)
    return e.exit_code
