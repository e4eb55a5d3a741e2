"""``glam tokenizer train [PRESET|CONFIG.yaml] [key=value ...] --output PATH.model``

Trains the SentencePiece tokenizer on a sample of the config's data mixture (the embedded default
corpus when ``data.sources`` is empty): ``data.tokenizer_sample_docs`` documents, ``model.vocab_size``
pieces unless ``--vocab-size`` says otherwise.

Written as a run directory's ``tokenizer.model`` (to replace a lost one), it is written only if it is
the very tokenizer the run's ``tokenizer.json`` records (its sha256): another one would turn the run's
checkpoints into fluent nonsense.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

from glam.cli.arguments import output_file, positive_int
from glam.config import ConfigError, resolve
from glam.errors import DataError


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
    train.set_defaults(func=run, overrides=[])  # key=value after the options land in overrides (glam.cli.main)
    return parser


def run(args: argparse.Namespace) -> int:
    from glam.data.pipeline import TOKENIZER_RECORD_FILE, resolve_sources, train_mixture_tokenizer
    from glam.data.sources import open_sources
    from glam.data.tokenizer import Tokenizer

    cfg = resolve(*split_spec([*args.config, *args.overrides]))
    start = time.perf_counter()
    sources = open_sources(resolve_sources(cfg), cfg.data.on_bad_json)
    recorded = run_record_sha(args.output)
    tokenizer = train_mixture_tokenizer(cfg, sources, None, vocab_size=args.vocab_size, model_type=args.model_type)
    tokenizer = Tokenizer(args.output, model_proto=tokenizer.model_proto)
    verdict = ""
    if recorded is not None:
        sha = hashlib.sha256(tokenizer.model_proto).hexdigest()
        record = os.path.join(os.path.dirname(os.path.abspath(args.output)), TOKENIZER_RECORD_FILE)
        if sha != recorded:
            raise DataError(
                f"the tokenizer trained here (sha256 {sha[:16]}...) is not the one {record} records "
                f"({recorded[:16]}...), so it is not written to {args.output}: the run's checkpoints were "
                "trained with the other one. Use the run's own config (its config.yaml, with no overrides) and "
                "data, or put back a copy of the original file"
            )
        verdict = f"; its sha256 matches {record}: it is the run's own tokenizer"
    tokenizer.save()
    names = ", ".join(s.name for s in sources)
    print(
        f"wrote {tokenizer.path}: {tokenizer.vocab_size} pieces ({args.model_type}) from up to "
        f"{cfg.data.tokenizer_sample_docs} documents of {names} in {time.perf_counter() - start:.1f}s{verdict}"
    )
    return 0


def run_record_sha(output: str) -> str | None:
    """The sha256 a run directory records for its ``tokenizer.model`` when ``output`` is that file."""
    from glam.data.pipeline import TOKENIZER_FILE, TOKENIZER_RECORD_FILE

    if os.path.basename(output) != TOKENIZER_FILE:
        return None
    record = os.path.join(os.path.dirname(os.path.abspath(output)), TOKENIZER_RECORD_FILE)
    if not os.path.isfile(record):
        return None
    try:
        with open(record, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value.get("sha256") if isinstance(value, dict) else None
