"""The data pipeline's user-facing error type, :class:`glam.errors.DataError` (one hierarchy: glam/errors.py)."""

from glam.errors import DataError

__all__ = ["DataError"]
