"""The one error type launchers print as a single line (`error: ...`) before exiting non-zero."""


class LaunchError(RuntimeError):
    pass
