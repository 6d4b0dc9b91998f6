"""The one exception type data commands turn into a one-line error and a non-zero exit."""

from ..errors import BadInputError


class DataError(BadInputError, ValueError):
    """Bad input to a data command or loader; the message names the value and the fix."""
