"""``glam data filter ...`` (the paper's quality filter) and ``glam data stats [CONFIG] [key=value ...]``.

``filter`` runs :func:`glam.data.quality_filter.filter_documents`: it trains the hashed-feature
classifier on curated (positive) and general (negative) text, scores every document of ``--input`` and
keeps each by Pareto sampling on its score (paper §6), writing the kept documents as JSONL (``text``,
``score``), atomically; this module parses the flags and prints the report. ``stats`` indexes the
config's sources and prints their documents and problems.
"""

from __future__ import annotations

import argparse

from glam.cli.arguments import finite_float, non_negative_int, output_file, positive_int
from glam.config import resolve


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("data", help="data tools: quality filter, source statistics")
    commands = parser.add_subparsers(dest="data_command", required=True)
    filt = commands.add_parser("filter", help="keep web documents by a quality classifier (paper §6)")
    filt.add_argument("--curated", nargs="+", required=True, help="files/dirs/globs of high-quality text")
    filt.add_argument("--general", nargs="+", required=True, help="files/dirs/globs of general web text")
    filt.add_argument("--input", required=True, help="the documents to filter (file, directory or glob)")
    filt.add_argument(
        "--output", required=True, type=output_file("kept.jsonl"), help="the JSONL file of kept documents"
    )
    for role in ("curated", "general", "input"):
        filt.add_argument(f"--{role}-format", default="auto", help=f"format of the {role} files (see SourceConfig)")
    filt.add_argument("--alpha", type=finite_float, default=9.0, help="Pareto shape (GPT-3/GLaM: 9)")
    filt.add_argument("--seed", type=non_negative_int, default=0)
    filt.add_argument("--max-train-docs", type=positive_int, default=20_000, help="per class")
    filt.add_argument("--save-model", type=output_file("classifier.npz"), help="also save the classifier (.npz)")
    filt.set_defaults(func=run_filter)
    stats = commands.add_parser("stats", help="index the config's sources and print their statistics")
    stats.add_argument("config", nargs="*", help="a preset name or a YAML config, then key=value overrides")
    stats.set_defaults(func=run_stats)
    return parser


def run_filter(args: argparse.Namespace) -> int:
    from glam.data.quality_filter import band_report, filter_documents, format_report

    result = filter_documents(
        args.curated,
        args.general,
        args.input,
        args.output,
        formats=(args.curated_format, args.general_format, args.input_format),
        alpha=args.alpha,
        seed=args.seed,
        max_train_docs=args.max_train_docs,
        save_model=args.save_model,
    )
    print(f"classifier: {result.curated} curated vs {result.general} general documents")
    print(format_report(band_report(result.scores, result.kept)))
    print(f"wrote {int(result.kept.sum())} of {len(result.scores)} documents to {args.output}")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from glam.cli.tokenizer import split_spec
    from glam.data.pipeline import resolve_sources
    from glam.data.sources import open_sources

    cfg = resolve(*split_spec(args.config))
    sources = open_sources(resolve_sources(cfg), cfg.data.on_bad_json)
    total = sum(s.weight for s in sources)
    print(f"{'source':28s} {'weight':>7s} {'files':>6s} {'documents':>10s} {'bad_json':>9s} {'non-utf8':>9s}")
    for s in sources:
        st = s.stats
        print(
            f"{s.name:28s} {s.weight / total:7.3f} {st.files:6d} {st.documents:10d} {st.bad_json:9d} "
            f"{st.decode_replacements:9d}"
        )
    return 0
