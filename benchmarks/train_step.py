"""Whole training-step throughput and MFU, sharing presets with training (issue 2b, 2c).

The step is the training engineer's ``glam.train.step.make_train_step`` (loss, backward, optimizer
update, non-finite skip) on a one-device mesh, fed a fixed random batch. Model FLOPs per token come
from ``glam.model.flops.model_size`` (PaLM appendix B: 6·N + 12·L·A·S, N = activated parameters;
rematerialised recomputation is not counted, as MFU requires). The peak is one large matmul timed in
the same interleaved rounds as the steps (``common.matmul_thunk``): fp32 n = 2048 by default,
``--peak-dtype bfloat16 --peak-n 8192`` for a bf16 run on an accelerator (benchmarks/gpu_check.sh).

    .venv/bin/python benchmarks/train_step.py --json train_step.json
    .venv/bin/python benchmarks/train_step.py --presets dense-0.1b glam-0.1b-8e \
        --set train.batch_size=2 train.seq_len=256
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from common import interleaved, matmul_thunk, write_json

from glam.config import resolve
from glam.data.packing import random_batch
from glam.model.flops import model_size
from glam.sharding.mesh import make_mesh
from glam.train.state import create_train_state
from glam.train.step import make_train_step, shard_batch

# Benchmark-only shorthands: a paper row with fewer experts (same activated parameters per token).
ALIASES = {"glam-0.1b-8e": ("glam-0.1b-64e", ["moe.num_experts=8"])}


def config(name: str, overrides: list[str]):
    preset, extra = ALIASES.get(name, (name, []))
    return resolve(preset, extra + ["mesh.data=1", "mesh.model=1", *overrides])


def stepper(cfg):
    """A zero-argument thunk running one training step; the state is threaded through (donated)."""
    mesh = make_mesh(cfg, jax.devices()[:1])
    step = make_train_step(cfg, mesh)
    batch = shard_batch(random_batch(cfg.train.batch_size, cfg.train.seq_len, cfg.model.vocab_size), mesh)
    box = {"state": create_train_state(cfg, mesh)}

    def run():
        box["state"], metrics = step(box["state"], batch)
        return metrics["loss"]

    return run


def run(args) -> dict:
    cfgs = {name: config(name, args.set) for name in args.presets}
    # The peak matmul runs in the same interleaved rounds as the steps, so both see the same load.
    matmul, matmul_flops = matmul_thunk(args.peak_n, jnp.dtype(args.peak_dtype))
    times = interleaved({**{name: stepper(cfg) for name, cfg in cfgs.items()}, "_matmul": matmul}, args.repeats)
    peak = matmul_flops / times["_matmul"]
    rows = []
    for name, cfg in cfgs.items():
        size = model_size(cfg)
        tokens = cfg.train.batch_size * cfg.train.seq_len
        tps = tokens / times[name]
        rows.append(
            {
                "preset": name,
                "overrides": args.set,
                "tokens_per_step": tokens,
                "seconds_per_step": times[name],
                "tokens_per_second": tps,
                "params_activated": size.params_activated,
                "flops_per_token": size.flops_per_token_train,
                "mfu": tps * size.flops_per_token_train / peak,
            }
        )
        print(f"{name:16s} {tps:10.0f} tok/s  MFU {rows[-1]['mfu']:.1%}", flush=True)
    base = rows[-1]["tokens_per_second"]
    for row in rows:
        row["tokens_per_second_ratio_to_last"] = row["tokens_per_second"] / base
    return {"benchmark": "train_step", "peak_flops": peak, "settings": vars(args), "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "tiny-dense"], help="the last one is the baseline")
    p.add_argument("--set", nargs="*", default=[], help="dotted overrides for every preset, e.g. model.remat=none")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--peak-dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of the peak matmul")
    p.add_argument("--peak-n", type=int, default=2048, help="size n of the n×n×n peak matmul")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    write_json(args.json, run(args))


if __name__ == "__main__":
    main()
