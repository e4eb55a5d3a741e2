"""JSON that every parser reads: NaN and ±Inf are written as ``null``.

Python's ``json`` writes ``NaN`` and ``Infinity``, which are not JSON (RFC 8259): ``jq``, JavaScript
and strict parsers reject the whole document. A diverged loss, a perplexity of an empty file or an
infinite learning rate must not make a summary unreadable, so every JSON output of glam
(``metrics.jsonl``, the ``glam train`` summary, ``--json`` files) goes through ``dumps``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def finite_or_null(value: Any) -> Any:
    """``value`` with every non-finite float (also inside dicts, lists, tuples, numpy scalars) → None."""
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(v) for v in value]
    if isinstance(value, np.generic | np.ndarray):
        return finite_or_null(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value: Any, **kwargs) -> str:
    """``json.dumps`` of ``finite_or_null(value)``; never writes NaN or Infinity."""
    return json.dumps(finite_or_null(value), allow_nan=False, **kwargs)
