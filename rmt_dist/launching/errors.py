"""The one error type launchers print as a single line (`error: ...`) before exiting non-zero."""

from ..errors import BadInputError


class LaunchError(BadInputError, RuntimeError):
    """A launch refused before anything ran (exit 2)."""
