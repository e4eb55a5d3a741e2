"""What the experiment scripts share: the sweep's JSON files, read and written one way, and the base
config of a sweep size. A module of its own, so the scripts import it and not each other in a circle
(``glam_claims`` runs the sweep and calls ``claims_report``; ``routing_sweep`` uses both).

Run the scripts from the repository root (``python experiments/glam_claims.py``): Python puts
``experiments/`` on the path, and the tests get it from pytest's ``pythonpath``.
"""

from __future__ import annotations

import dataclasses
import json
import os


def read_json(path: str):
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path: str, value) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)


def record_invocation(out: str, start: float) -> None:
    """Append this invocation (seconds since ``start``, argv, end time, load) to ``OUT/sweep.json``."""
    import sys
    import time

    path = os.path.join(out, "sweep.json")
    sweep = read_json(path) or {"invocations": []}
    sweep["invocations"].append(
        {"seconds": time.perf_counter() - start, "argv": sys.argv, "finished": time.ctime(), "load": os.getloadavg()}
    )
    write_json(path, sweep)


def base_config(scale, size, data_root: str | None, tokenizer: str):
    """The ``tiny`` preset at this size (a ``glam_claims.Size`` of a ``Scale``), on the shared corpus, with
    the sweep's tokenizer."""
    from glam.config import resolve
    from glam.data.shared_corpus import shared_corpus_sources

    cfg = resolve(
        "tiny",
        [
            f"model.vocab_size={scale.vocab_size}",
            f"model.d_model={size.d_model}",
            f"model.num_layers={scale.num_layers}",
            f"model.num_heads={size.num_heads}",
            f"model.head_dim={size.head_dim}",
            f"model.ffn_dim={size.ffn_dim}",
            f"model.max_seq_len={max(256, scale.seq_len)}",
            f"train.batch_size={scale.batch_size}",
            f"train.seq_len={scale.seq_len}",
            f"train.steps={size.steps}",
            f"train.log_every={scale.log_every}",
            f"train.eval_every={size.eval_every}",
            f"train.eval_batches={scale.eval_batches}",
            f"optim.warmup_steps={scale.warmup_steps}",
            f"checkpoint.every={size.eval_every}",
            "checkpoint.keep=1",
            f"data.tokenizer_sample_docs={scale.tokenizer_docs}",
        ],
    )
    sources = shared_corpus_sources(data_root) if data_root else ()  # no data_root: sizes only
    data = dataclasses.replace(cfg.data, sources=sources, tokenizer=tokenizer)
    return dataclasses.replace(cfg, data=data)


def sweep_parser(description: str, out: str, scales, *, tokenizer: bool = True, only: str = "run names"):
    """The flags every sweep script takes: where its runs go, the data, the scale, the plots, which runs,
    how many workers (and, hidden, which worker this process is), and report-only."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default=out, help="sweep folder (one run directory per run)")
    parser.add_argument("--data-root", default="../shared/data", help="folder holding corpus/")
    parser.add_argument("--scale", choices=sorted(scales), default="powered")
    if tokenizer:
        parser.add_argument("--tokenizer", default="", help="reuse this tokenizer (e.g. the claims sweep's)")
    parser.add_argument("--plots", default="docs/results", help="where the PNG plots go")
    parser.add_argument("--only", default="", help=f"comma-separated {only} (default: all)")
    parser.add_argument("--workers", type=int, default=1, help="runs trained at once, one per CPU core")
    parser.add_argument("--worker", type=int, default=-1, help=argparse.SUPPRESS)  # set by --workers
    parser.add_argument("--report-only", action="store_true", help="train nothing; report what --out holds")
    return parser


def prepare_out(args) -> str:
    """Make ``--out``; copy ``--tokenizer`` there when given and none is there yet; pin a ``--worker``
    child to its CPU core. Returns the absolute path of the sweep's tokenizer."""
    import shutil

    os.makedirs(args.out, exist_ok=True)
    tokenizer = os.path.join(args.out, "tokenizer.model")
    if getattr(args, "tokenizer", "") and not os.path.isfile(tokenizer):
        if not os.path.isfile(args.tokenizer):
            raise SystemExit(
                f"--tokenizer {args.tokenizer}: no such file; give the tokenizer.model of the sweep to reuse "
                "(e.g. runs/claims/tokenizer.model, which experiments/glam_claims.py trains), or leave the flag out"
            )
        shutil.copyfile(args.tokenizer, tokenizer)
    if args.worker >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.worker % os.cpu_count()})
    return os.path.abspath(tokenizer)
