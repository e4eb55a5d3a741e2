"""``glam upcycle --from DENSE_RUN --run-dir NEW_RUN moe.num_experts=E [key=value ...]``: sparse upcycling.

Builds a GLaM model from a trained dense run (glam.train.upcycle) and writes its step-0 checkpoint;
then ``glam train NEW_RUN/config.yaml --run-dir NEW_RUN`` trains it like any run::

    glam upcycle --from runs/dense --run-dir runs/upcycled moe.num_experts=8 train.steps=600
    glam train runs/upcycled/config.yaml --run-dir runs/upcycled

``--continue`` starts the new run at the source's step, with its data state: the learning-rate schedule
and the data stream go on where the dense run stopped (``train.steps`` then counts the dense steps too).
"""

from __future__ import annotations

import argparse

from glam import jsonsafe
from glam.cli.arguments import output_dir
from glam.errors import out_of_memory_advice
from glam.files import check_output_dir


def run(args: argparse.Namespace) -> int:
    from glam.train.upcycle import upcycle

    check_output_dir(args.run_dir)
    advice = "choose fewer experts (moe.num_experts), or a larger mesh"
    with out_of_memory_advice(advice):
        summary = upcycle(args.source, args.run_dir, args.overrides, continue_source=args.continue_source)
    print(jsonsafe.dumps(summary, indent=2))
    print(f"next: glam train {summary['config']} --run-dir {args.run_dir}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("upcycle", help="start a MoE run from a trained dense run (sparse upcycling)")
    p.add_argument("--from", dest="source", required=True, help="the dense run directory to upcycle")
    p.add_argument("--run-dir", type=output_dir, required=True, help="the new run directory")
    p.add_argument(
        "--continue",
        dest="continue_source",
        action="store_true",
        help="start at the source's step and data position (the schedule and data go on) instead of step 0",
    )
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides; moe.num_experts=E is required")
    p.set_defaults(func=run)
