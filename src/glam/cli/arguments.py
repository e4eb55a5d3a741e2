"""Argument types shared by the subcommands: checked when the command line is parsed, before any work.

A bad value is an argparse error (one line, exit 2): ``error: argument --batch-size: got -1; give an
integer >= 1``. Output paths are checked by :mod:`glam.files` here, so ``glam eval --json DIR`` fails
at once instead of after the whole evaluation.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from glam.errors import GLaMError
from glam.files import check_output_dir, check_output_file


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}; give an integer >= {low}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"got {value}; give an integer >= {low}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}; give a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"got {text!r}; give a finite number")
    return value


def output_file(example: str = "out") -> Callable[[str], str]:
    """A path a file will be written to (``example``: a file name to suggest when it is a directory)."""

    def parse(text: str) -> str:
        try:
            check_output_file(text, example)
        except GLaMError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    parse.__name__ = "output file"
    return parse


def output_dir(text: str) -> str:
    """A directory that will be created or written into (``--run-dir``)."""
    try:
        check_output_dir(text)
    except GLaMError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def mesh_arg(text: str) -> tuple[int, int]:
    """``DATAxMODEL`` (e.g. ``4x2``) → (data, model), both at least 1."""
    try:
        data, model = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write it as DATAxMODEL, e.g. 4x2") from None
    if data < 1 or model < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: both sizes must be at least 1")
    return data, model


mesh_arg.__name__ = "mesh"
