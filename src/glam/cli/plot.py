"""``glam plot RUN``: the plots of a run (glam.train.plots) as PNGs in RUN/plots/, their paths printed."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from glam.train.plots import plot_run

    for path in plot_run(args.run_dir, log=lambda note: print(note, file=sys.stderr)):
        print(path)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="loss curves and expert-load heat map of a run, as PNGs in RUN/plots/")
    p.add_argument("run_dir", metavar="RUN", help="a run directory made by `glam train`")
    p.set_defaults(func=run)
