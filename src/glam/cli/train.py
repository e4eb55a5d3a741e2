"""``glam train [PRESET | CONFIG.yaml] [key=value ...] [--run-dir DIR]``: train, or resume a run directory.

Examples::

    glam train tiny                                   # runs/tiny; re-running resumes it
    glam train tiny train.steps=50 checkpoint.every=10 --run-dir runs/try
    glam train glam-1.7b-64e mesh.data=16 mesh.model=4 mesh.num_processes=8 \\
        mesh.process_id=$RANK mesh.coordinator_address=host0:1234   # one command per host
"""

from __future__ import annotations

import argparse
import json
import os

from glam.config import GLaMConfig, resolve


def default_run_dir(cfg: GLaMConfig) -> str:
    return os.path.join("runs", cfg.name)


def run(args: argparse.Namespace) -> int:
    from glam.train.loop import train

    cfg = resolve(args.config, args.overrides)
    run_dir = args.run_dir or default_run_dir(cfg)
    summary = train(cfg, run_dir)
    if summary.get("is_main", True):
        print(json.dumps(summary, indent=2, default=float))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a preset or config (resumes the run directory if it has checkpoints)")
    p.add_argument("config", nargs="?", default="tiny", help="preset name or config .yaml (default: tiny)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=100")
    p.add_argument("--run-dir", default=None, help="run directory (default: runs/<preset>)")
    p.set_defaults(func=run)
