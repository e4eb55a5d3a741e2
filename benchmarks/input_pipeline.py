"""The input pipeline alone: the tokens/s one host's `DataPipeline.next_batch` delivers at 1, 2, 4 and 8
simulated processes for the same global batch, against what the training step consumes (the
pipeline must never be the bottleneck).

    .venv/bin/python benchmarks/input_pipeline.py --preset tiny --batches 100 --repeats 3

Each simulated process is a pipeline built in this process with an explicit ``process_index=0`` of
``process_count=P`` and ``data.shards`` = the largest P, so every P sees the same global batch and
process 0 packs only its H/P reading shards. ``per_host`` is process 0's own rows per second;
``feeds`` is the global-batch rate a job of P such hosts sustains (B·S per batch ÷ one host's time per
batch), and ``ratio`` is that over ``--step-tokens-per-second``, the training step's rate. The
``unsharded`` row is one host packing the whole batch with ``data.shards=1``: what every host did at
any P before each process built only its own rows. Rounds are interleaved over P (common.py).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import write_json

from glam.config import resolve
from glam.data.pipeline import DataPipeline, build_pipeline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--set", nargs="*", default=[], help="dotted overrides")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--batches", type=int, default=100, help="batches per process count per round")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median is reported")
    p.add_argument("--step-tokens-per-second", type=float, default=5007.0, help="training step (benchmarks.md §3)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    shards = max(args.processes)
    cfg = resolve(args.preset, [*args.set, f"data.shards={shards}"])
    with tempfile.TemporaryDirectory() as run_dir:
        base = build_pipeline(cfg, run_dir, prefetch=0)  # trains the tokenizer once, not timed
    pipes = {P: DataPipeline(cfg, base.tokenizer, base.sources, process_count=P) for P in args.processes}
    unsharded_cfg = resolve(args.preset, [*args.set, "data.shards=1"])
    pipes["unsharded"] = DataPipeline(unsharded_cfg, base.tokenizer, base.sources)
    times: dict = {name: [] for name in pipes}
    for pipe in pipes.values():
        pipe.next_batch()  # warm-up: the first documents' orders and tokenizer calls
    for _ in range(args.repeats):
        for name, pipe in pipes.items():
            start = time.perf_counter()
            for _ in range(args.batches):
                pipe.next_batch()
            times[name].append((time.perf_counter() - start) / args.batches)
    B, S = cfg.train.batch_size, cfg.train.seq_len
    rows = []
    for name, seconds in times.items():
        per_batch = sorted(seconds)[len(seconds) // 2]
        P = 1 if name == "unsharded" else name
        feeds = B * S / per_batch
        rows.append(
            {
                "processes": name,
                "ms_per_batch": 1e3 * per_batch,
                "per_host_tokens_per_second": B // P * S / per_batch,
                "feeds_tokens_per_second": feeds,
                "ratio_to_step": feeds / args.step_tokens_per_second,
            }
        )
        print(
            f"P={name}: {1e3 * per_batch:.2f} ms per batch for {B // P} of {B} rows; per host "
            f"{B // P * S / per_batch:,.0f} tokens/s; feeds {feeds:,.0f} tokens/s = "
            f"{feeds / args.step_tokens_per_second:,.0f}x the step"
        )
    result = {"benchmark": "input_pipeline", "preset": args.preset, "batch": [B, S], "shards": shards, "rows": rows}
    write_json(args.json, result)


if __name__ == "__main__":
    main()
