"""The ``glam`` command: one subcommand per job, each a thin layer over an importable function.

User mistakes (a bad config, a missing file, a mesh that doesn't divide the model, ...) raise one of
the project's error types; they are printed as one ``error: ...`` line with exit status 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules; each has add_parser(subparsers) registering its commands with func=run.
SUBCOMMANDS = ("info", "plan", "train", "demo", "tokenizer", "data", "generate", "eval", "plot")


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'the user asked for something that cannot work'."""
    from glam.errors import GLaMError

    errors: list[type[BaseException]] = [GLaMError]
    for mod, name in (
        ("glam.config", "ConfigError"),
        ("glam.data.errors", "DataError"),
        ("glam.evals.tasks", "TaskError"),
    ):
        try:
            errors.append(getattr(importlib.import_module(mod), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glam", description="GLaM sparse Mixture-of-Experts language models: one subcommand per job."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"glam.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"glam.cli.{name}":
                continue  # not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may also come after the options (glam plan tiny --mesh 4x2 train.steps=3)
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
