"""``glam train [PRESET | CONFIG.yaml] [key=value ...] [--run-dir DIR]``: train, or resume a run directory.

Examples::

    glam train tiny                                   # runs/tiny; re-running resumes it
    glam train tiny train.steps=50 checkpoint.every=10 --run-dir runs/try
    glam train glam-1.7b-64e mesh.data=16 mesh.model=4 mesh.num_processes=8 \\
        mesh.process_id=$RANK mesh.coordinator_address=host0:1234   # one command per host
"""

from __future__ import annotations

import argparse
import os

from glam import jsonsafe
from glam.cli.arguments import output_dir
from glam.config import GLaMConfig, resolve
from glam.errors import out_of_memory_advice
from glam.files import check_output_dir


def default_run_dir(cfg: GLaMConfig) -> str:
    return os.path.join("runs", cfg.name)


def memory_advice(cfg: GLaMConfig, spec: str, overrides: list[str]) -> str:
    """What to do when a training run does not fit: the batch that did not, and how to check one first."""
    t = cfg.train
    same = " [the same overrides]" if overrides else ""
    return (
        f"train.batch_size={t.batch_size} x train.seq_len={t.seq_len} did not fit; lower train.batch_size or raise "
        f"train.grad_accum (micro-batches of batch_size/grad_accum), and check a batch first with "
        f"`glam plan {spec}{same} --mesh DATAxMODEL --batch {t.batch_size}`"
    )


def run(args: argparse.Namespace) -> int:
    from glam.train.interrupt import exit_status
    from glam.train.loop import train

    cfg = resolve(args.config, args.overrides)
    run_dir = args.run_dir or default_run_dir(cfg)
    check_output_dir(run_dir)
    with out_of_memory_advice(memory_advice(cfg, args.config, args.overrides)):
        summary = train(cfg, run_dir)
    if summary.get("is_main", True):
        print(jsonsafe.dumps(summary, indent=2, default=float))
    return exit_status(summary)  # 128 + the signal's number when a signal stopped it


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a preset or config (resumes the run directory if it has checkpoints)")
    p.add_argument("config", nargs="?", default="tiny", help="preset name or config .yaml (default: tiny)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=100")
    p.add_argument("--run-dir", type=output_dir, default=None, help="run directory (default: runs/<preset>)")
    p.set_defaults(func=run)
