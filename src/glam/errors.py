"""The base of glam's user-facing errors: the CLI prints these as one line, never a traceback."""


class GLaMError(ValueError):
    """A user mistake or bad input: the message names the problem and the fix."""
