"""One exception type for every user-facing error.

The CLI prints ``BRGMError`` messages as a single line and exits with status 2; anything
else is a bug and keeps its traceback.
"""


class BRGMError(ValueError):
    """Bad input or configuration. The message says what is wrong and how to fix it."""
