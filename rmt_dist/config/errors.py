from ..errors import BadInputError


class ConfigError(BadInputError, ValueError):
    """A recipe problem; the message is one line naming the file, the key and the fix."""
