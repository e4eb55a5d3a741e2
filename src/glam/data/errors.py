"""The one user-facing error type of the data pipeline."""

from __future__ import annotations


class DataError(ValueError):
    """A problem with the training data or tokenizer: the message names the problem and the fix.

    The CLI prints it as one ``error: ...`` line and exits with status 2.
    """
