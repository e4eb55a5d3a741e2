"""``glam demo [--run-dir DIR] [key=value ...]``: the main job of a fresh clone, on a CPU, in minutes.

Trains the ``tiny`` preset (8 experts) on the embedded default corpus (the Python standard library's
documentation), writes the loss and expert-load plots, and prints a short greedy sample. Re-running
resumes the same run directory.
"""

from __future__ import annotations

import argparse
import sys

from glam.cli.arguments import output_dir, positive_int
from glam.cli.train import memory_advice
from glam.config import resolve
from glam.errors import out_of_memory_advice

PROMPTS = ("Return a new", "class ")


def run(args: argparse.Namespace) -> int:
    from glam.checkpoint import load_for_inference
    from glam.inference import generate
    from glam.train.interrupt import exit_status
    from glam.train.loop import train
    from glam.train.plots import plot_run

    cfg = resolve("tiny", args.overrides)
    with out_of_memory_advice(memory_advice(cfg, "tiny", args.overrides)):
        summary = train(cfg, args.run_dir)
    if summary["interrupted"]:  # saved and stopped on Ctrl-C / SIGTERM: no plots, no sample
        return exit_status(summary)
    if summary["start_step"] < summary["step"]:
        held = summary["heldout"]["heldout/mean"]
        print(f"trained to step {summary['step']}: train loss {summary['loss']:.3f}, held-out loss {held:.3f}")
    else:
        print(f"{args.run_dir} is already trained to step {summary['step']} (raise train.steps to go on)")
    for path in plot_run(args.run_dir, log=lambda note: print(note, file=sys.stderr)):
        print(f"plot: {path}")
    cfg, params, tokenizer = load_for_inference(args.run_dir)
    for prompt, completion in zip(PROMPTS, generate(cfg, params, tokenizer, list(PROMPTS), max_tokens=args.tokens)):
        print(f"sample (greedy): {prompt!r} → {completion.text!r}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="train tiny on the default corpus, plot it, and print a greedy sample")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of the tiny preset")
    p.add_argument("--run-dir", type=output_dir, default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--tokens", type=positive_int, default=32, help="tokens to generate per prompt")
    p.set_defaults(func=run)
