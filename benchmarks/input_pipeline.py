"""The input pipeline alone: tokens/s that `DataPipeline.next_batch` delivers, to compare with the
training step's tokens/s (the pipeline must never be the bottleneck).

    .venv/bin/python benchmarks/input_pipeline.py --preset tiny --batches 200
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import write_json

from glam.config import resolve
from glam.data.pipeline import build_pipeline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--set", nargs="*", default=[], help="dotted overrides")
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--prefetch", type=int, default=0, help="0 = measure the producer alone, no prefetch thread")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    cfg = resolve(args.preset, args.set)
    with tempfile.TemporaryDirectory() as run_dir:
        pipe = build_pipeline(cfg, run_dir, prefetch=args.prefetch)  # trains the tokenizer once, not timed
        pipe.next_batch()
        start = time.perf_counter()
        for _ in range(args.batches):
            pipe.next_batch()
        seconds = time.perf_counter() - start
        pipe.close()
    tokens = args.batches * cfg.train.batch_size * cfg.train.seq_len
    result = {
        "benchmark": "input_pipeline",
        "preset": args.preset,
        "batches": args.batches,
        "tokens_per_second": tokens / seconds,
        "seconds_per_batch": seconds / args.batches,
    }
    print(f"{args.preset}: {tokens / seconds:,.0f} tokens/s ({1e3 * seconds / args.batches:.1f} ms per batch)")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
