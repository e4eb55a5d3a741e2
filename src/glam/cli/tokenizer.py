"""``glam tokenizer train [PRESET|CONFIG.yaml] [key=value ...] --output PATH.model``

Trains the SentencePiece tokenizer on a sample of the config's data mixture (the embedded default
corpus when ``data.sources`` is empty): ``data.tokenizer_sample_docs`` documents, ``model.vocab_size``
pieces unless ``--vocab-size`` says otherwise.
"""

from __future__ import annotations

import argparse
import time

from glam.cli.arguments import output_file, positive_int
from glam.config import ConfigError, resolve


def split_spec(items: list[str]) -> tuple[str | None, list[str]]:
    """``[PRESET|CONFIG.yaml] [key=value ...]`` → (spec or None, overrides)."""
    if items and "=" not in items[0]:
        spec, overrides = items[0], items[1:]
    else:
        spec, overrides = None, items
    stray = [o for o in overrides if "=" not in o]
    if stray:
        raise ConfigError(f"{stray[0]!r}: after the preset or config file, give overrides as section.field=value")
    return spec, overrides


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("tokenizer", help="train a SentencePiece tokenizer")
    commands = parser.add_subparsers(dest="tokenizer_command", required=True)
    train = commands.add_parser("train", help="train a tokenizer on the config's data mixture")
    train.add_argument("config", nargs="*", help="a preset name or a YAML config, then key=value overrides")
    train.add_argument("--output", required=True, type=output_file("tokenizer.model"), help="the .model file to write")
    train.add_argument("--vocab-size", type=positive_int, default=None, help="pieces (default: model.vocab_size)")
    train.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram")
    train.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from glam.data.pipeline import resolve_sources, train_mixture_tokenizer
    from glam.data.sources import open_sources

    cfg = resolve(*split_spec(args.config))
    start = time.perf_counter()
    sources = open_sources(resolve_sources(cfg), cfg.data.on_bad_json)
    tokenizer = train_mixture_tokenizer(
        cfg, sources, args.output, vocab_size=args.vocab_size, model_type=args.model_type
    )
    names = ", ".join(s.name for s in sources)
    print(
        f"wrote {tokenizer.path}: {tokenizer.vocab_size} pieces ({args.model_type}) from up to "
        f"{cfg.data.tokenizer_sample_docs} documents of {names} in {time.perf_counter() - start:.1f}s"
    )
    return 0
