"""glam's user-facing errors and warnings: one hierarchy, printed by the CLI as one line, never a traceback.

    GLaMError (ValueError)     a user mistake or bad input; the message names the problem and the fix
    ├── ConfigError            a config field, a YAML file, an override or a flag
    ├── DataError              training data, a tokenizer, a text file
    └── TaskError              an evaluation task file or its data (TaskDataError: the data is absent)

    GLaMWarning (UserWarning)  accepted, but the user should know (printed as one ``warning:`` line)

They stay subclasses of ``ValueError`` so code that catches ``ValueError`` keeps working. The classes
are re-exported where they were first defined (``glam.config.ConfigError``, ``glam.data.errors.DataError``,
``glam.evals.tasks.TaskError``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class GLaMError(ValueError):
    """A user mistake or bad input: the message names the problem and the fix."""


class ConfigError(GLaMError):
    """A user mistake in a config: the message names the field and how to fix it."""


class DataError(GLaMError):
    """A problem with the training data, a tokenizer or a text file: the message names the problem and the fix."""


class TaskError(GLaMError):
    """A task file that cannot be used, or task data that cannot be found: the message says how to fix it."""


class GLaMWarning(UserWarning):
    """Input glam accepts but the user should hear about (replaced bytes, normalised weights, fewer shots)."""


def is_out_of_memory(exc: BaseException) -> bool:
    """A host ``MemoryError`` or an XLA allocation failure (``RESOURCE_EXHAUSTED``, any backend)."""
    if isinstance(exc, MemoryError):
        return True
    return type(exc).__name__ in ("JaxRuntimeError", "XlaRuntimeError") and "RESOURCE_EXHAUSTED" in str(exc)


@contextlib.contextmanager
def out_of_memory_advice(advice: str) -> Iterator[None]:
    """Turn running out of memory inside the block into one :class:`GLaMError` line ending with ``advice``."""
    try:
        yield
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        detail = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise GLaMError(f"out of memory ({detail}); {advice}") from None
