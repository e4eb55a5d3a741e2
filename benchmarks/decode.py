"""Decoding and prefill tokens/s with the KV cache, ``tiny`` vs ``tiny-dense`` (issue 10).

Uses ``glam.inference.decode``: a ``prefill`` of B random prompts, then ``decode_step`` (jitted,
cache donated) for ``--tokens`` greedy steps, timed from the per-generation ``decode_params`` split
to the last token. Prefill rows time one ``prefill`` call over ``--prefill-batch`` prompts of
``--prefill-len`` tokens. Every (phase, batch) is measured for all presets in turn within each
repeat, so load changes hit them alike; medians over repeats. Random weights: speed does not
depend on what the model learned.

    .venv/bin/python benchmarks/decode.py --batch 1 8 64 --json decode.json
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from common import write_json

from glam.config import resolve
from glam.inference.decode import decode_params, decode_step, prefill
from glam.inference.sampling import Sampler
from glam.model.init import init_params


def random_prompts(cfg, batch: int, length: int) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(4, cfg.model.vocab_size, (batch, length)), jnp.int32)
    return tokens, jnp.tile(jnp.arange(length, dtype=jnp.int32), (batch, 1))


def decode_timer(cfg, params, batch: int, prompt: int, tokens: int) -> Callable[[], float]:
    """Seconds for ``tokens`` decode steps of ``batch`` rows after an (untimed) prefill."""
    prompts, positions = random_prompts(cfg, batch, prompt)
    active = jnp.ones((batch,), bool)
    sampler = Sampler()

    def seconds() -> float:
        state, tok = prefill(
            cfg, params, prompts, positions, jnp.ones_like(prompts), jax.random.key(1), sampler=sampler,
            cache_len=prompt + tokens + 1,
        )  # fmt: skip
        jax.block_until_ready(tok)
        start = time.perf_counter()
        step_params = decode_params(params)
        for _ in range(tokens):
            state, tok = decode_step(cfg, step_params, state, tok, active, sampler=sampler)
        jax.block_until_ready(tok)
        return time.perf_counter() - start

    return seconds


def prefill_timer(cfg, params, batch: int, length: int) -> Callable[[], float]:
    """Seconds for one prefill of ``batch`` prompts of ``length`` tokens (cache of ``length`` slots)."""
    prompts, positions = random_prompts(cfg, batch, length)

    def seconds() -> float:
        start = time.perf_counter()
        _, tok = prefill(
            cfg, params, prompts, positions, jnp.ones_like(prompts), jax.random.key(1), sampler=Sampler(),
            cache_len=length,
        )  # fmt: skip
        jax.block_until_ready(tok)
        return time.perf_counter() - start

    return seconds


def cast(params: dict, dtype: str) -> dict:
    """The float parameters stored in ``dtype`` (bfloat16: half the bytes a step reads)."""
    if dtype == "float32":
        return params
    return jax.tree.map(lambda a: a.astype(dtype) if a.dtype == jnp.float32 else a, params)


def run(args) -> dict:
    # --experts E...: the first preset again with E experts, before the baseline (the last preset)
    variants = {f"{args.presets[0]}@E={e}": [*args.set, f"moe.num_experts={e}"] for e in args.experts}
    names = [*args.presets[:-1], *variants, args.presets[-1]]
    cfgs = {name: resolve(name.split("@")[0], variants.get(name, args.set)) for name in names}
    params = {name: cast(init_params(cfg, jax.random.key(0)), args.param_dtype) for name, cfg in cfgs.items()}
    cases = [("decode", b, args.tokens) for b in args.batch] + [("prefill", args.prefill_batch, args.prefill_len)]
    timers = {}
    for phase, batch, n in cases:
        for name, cfg in cfgs.items():
            if phase == "decode":
                timers[name, phase, batch] = decode_timer(cfg, params[name], batch, args.prompt, n)
            else:
                timers[name, phase, batch] = prefill_timer(cfg, params[name], batch, n)
    for timer in timers.values():
        timer()  # compile
    times: dict[tuple, list[float]] = {key: [] for key in timers}
    for _ in range(args.repeats):
        for phase, batch, _n in cases:
            for name in names:  # presets alternate within every (phase, batch) of every repeat
                times[name, phase, batch].append(timers[name, phase, batch]())
    rows = []
    for phase, batch, n in cases:
        group = []
        for name in names:
            tps = batch * n / float(np.median(times[name, phase, batch]))
            group.append({"preset": name, "phase": phase, "batch": batch, "tokens": n, "tokens_per_second": tps})
        for row in group:
            row["ratio_to_last"] = row["tokens_per_second"] / group[-1]["tokens_per_second"]
            print(f"{phase:8s} B={batch:<3d} {row['preset']:12s} {row['tokens_per_second']:10.0f} tok/s "
                  f"{row['ratio_to_last']:5.2f}", flush=True)  # fmt: skip
        rows += group
    return {"benchmark": "decode", "settings": vars(args), "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "tiny-dense"], help="the last one is the baseline")
    p.add_argument("--set", nargs="*", default=[], help="dotted overrides for every preset")
    p.add_argument("--experts", type=int, nargs="*", default=[], help="add the first preset with these E")
    p.add_argument(
        "--param-dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="store the parameters in this dtype (with --set model.activation_dtype=bfloat16)",
    )
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64], help="decode batch sizes")
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens before the decode steps")
    p.add_argument("--tokens", type=int, default=64, help="decode steps timed")
    p.add_argument("--prefill-batch", type=int, default=8)
    p.add_argument("--prefill-len", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    write_json(args.json, run(args))


if __name__ == "__main__":
    main()
