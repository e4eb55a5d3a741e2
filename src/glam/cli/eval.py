"""``glam eval`` and ``glam perplexity``: thin commands over :mod:`glam.evals`.

    glam eval --checkpoint runs/demo --tasks copa,boolq --shots 1 --limit 100 --json out.json
    glam eval --checkpoint runs/demo --tasks all --shots few
    glam perplexity --checkpoint runs/demo heldout.txt more.jsonl

The model is loaded with ``glam.inference.load_language_model(run_dir)``; decoding settings come from
the run's saved config (``eval`` section) unless overridden on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from glam.cli.arguments import non_negative_int, output_file, positive_int
from glam.config import ConfigError, EvalConfig


def _shots(text: str) -> int | str:
    if text == "few":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shots: got {text!r}; give a number >= 0 or 'few'") from None
    if value < 0:
        raise argparse.ArgumentTypeError("--shots: must be >= 0 (or 'few' for each task's GPT-3 K)")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``eval`` and ``perplexity`` subcommands."""
    p = subparsers.add_parser("eval", help="evaluate a checkpoint on the paper's tasks (GLaM §7)")
    p.add_argument("--checkpoint", required=True, help="run directory of the model to evaluate")
    p.add_argument("--tasks", default="all", help="comma-separated task names or YAML paths; 'all' = tasks with data")
    p.add_argument("--shots", type=_shots, default=0, help="demonstrations per example: N, or 'few' (per-task K)")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first K examples of each task")
    p.add_argument(
        "--json", dest="json_out", type=output_file("results.json"), help="also write the results to this JSON file"
    )
    p.add_argument("--data-root", default=None, help="the folder holding the tasks' data (default: $GLAM_TASK_DATA)")
    p.add_argument("--task-dir", action="append", default=[], help="extra folder of task YAML files")
    p.add_argument("--beam-size", type=positive_int, default=None, help="beam width for generation tasks (paper: 4)")
    p.add_argument("--max-tokens", type=positive_int, default=None, help="generation length limit")
    p.add_argument("--seed", type=non_negative_int, default=None, help="few-shot sampling seed")
    p.set_defaults(func=run)

    q = subparsers.add_parser("perplexity", help="perplexity and bits per byte of a checkpoint on text files")
    q.add_argument("--checkpoint", required=True, help="run directory of the model")
    q.add_argument(
        "files",
        nargs="+",
        help="plain text files (one document each), or .jsonl / .json files of records (field 'text')",
    )
    q.add_argument(
        "--json", dest="json_out", type=output_file("perplexity.json"), help="also write the results to this JSON file"
    )
    q.set_defaults(func=run_perplexity)


def eval_config(args: argparse.Namespace, saved: EvalConfig) -> EvalConfig:
    """The run's ``eval`` settings (``saved``: from the checkpoint's own config) with the flags applied."""
    overrides = {"beam_size": args.beam_size, "max_decode_tokens": args.max_tokens, "seed": args.seed}
    return dataclasses.replace(saved, **{k: v for k, v in overrides.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    """``glam eval``: load the model, evaluate, print the table, optionally write JSON."""
    from rich.console import Console

    from glam.evals import evaluate, print_results, resolve_task_names, write_json
    from glam.inference import load_language_model

    console = Console(stderr=True)
    names = resolve_task_names(args.tasks, args.data_root, tuple(args.task_dir))  # fail before loading the model
    model = load_language_model(args.checkpoint)
    cfg = getattr(model, "cfg", None)  # a glam checkpoint's own config (another LanguageModel has none)
    config = eval_config(args, cfg.eval if cfg is not None else EvalConfig())
    results = evaluate(
        model,
        names,
        shots=args.shots,
        limit=args.limit,
        data_root=args.data_root,
        config=config,
        task_dirs=tuple(args.task_dir),
        log=lambda msg: console.print(f"[dim]{msg}[/dim]"),
    )
    results["settings"]["checkpoint"] = str(args.checkpoint)
    print_results(results)
    if args.json_out:
        write_json(results, args.json_out)
        console.print(f"wrote {args.json_out}")
    return 0


def run_perplexity(args: argparse.Namespace) -> int:
    """``glam perplexity``: nats per token, perplexity and bits per byte of each file."""
    from glam import jsonsafe
    from glam.evals import evaluate_perplexity, write_json
    from glam.evals.perplexity import read_documents
    from glam.inference import load_language_model

    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:
        raise ConfigError(f"perplexity: no such file {missing[0]}; check the path")
    documents = {path: read_documents(path) for path in args.files}  # bad files fail before the model loads
    results = evaluate_perplexity(load_language_model(args.checkpoint), documents)
    results["checkpoint"] = str(args.checkpoint)
    print(jsonsafe.dumps(results, indent=2))  # null, not NaN, for an empty file
    if args.json_out:
        write_json(results, args.json_out)
    return 0
