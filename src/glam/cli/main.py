"""The ``glam`` command: one subcommand per job, each a thin layer over an importable function.

User mistakes (a bad config, a missing file, a mesh that doesn't divide the model, a bad flag, ...)
raise :class:`glam.errors.GLaMError` (or argparse's error); they are printed as one ``error: ...`` line
with exit status 2, never a traceback. :class:`glam.errors.GLaMWarning` prints as one ``warning: ...`` line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from glam.errors import GLaMError, GLaMWarning

# Subcommand modules; each has add_parser(subparsers) registering its commands with func=run.
SUBCOMMANDS = (
    "info",
    "plan",
    "train",
    "upcycle",
    "demo",
    "tokenizer",
    "data",
    "generate",
    "eval",
    "serve",
    "plot",
    "export",
)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: ``error: <message> (see glam <command> --help)``, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="glam", description="GLaM sparse Mixture-of-Experts language models: one subcommand per job.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:  # a module that fails to import fails the command: never a silent gap
        importlib.import_module(f"glam.cli.{name}").add_parser(sub)
    return parser


def _one_line_warnings(fallback):
    """A ``warnings.showwarning`` that prints glam's warnings as one ``warning: ...`` line."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, GLaMWarning):
            print(f"warning: {message}", file=sys.stderr, flush=True)
        else:
            fallback(message, category, filename, lineno, file, line)

    return show


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line → its namespace (overrides may follow the options)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may also come after the options (glam plan tiny --mesh 4x2 train.steps=3)
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        parser.exit(2)
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(argv)
    except SystemExit as exc:  # --help (0) or a usage error, already printed as one line (2)
        return exc.code if isinstance(exc.code, int) else 2
    with warnings.catch_warnings():
        warnings.simplefilter("always", GLaMWarning)
        warnings.showwarning = _one_line_warnings(warnings.showwarning)
        try:
            return int(args.func(args) or 0)
        except GLaMError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
