"""The one error type users see: its message is printed as a single line and the command exits 2."""


class SlmSwapError(Exception):
    """Bad input or settings. The message names the file, row or setting at fault."""
