"""Decoding tokens/s with the KV cache, ``tiny`` vs ``tiny-dense`` (issue 2e).

Uses the inference engineer's ``glam.inference.decode``: one ``prefill`` of B random prompts, then
``decode_step`` (jitted, cache donated) timed for ``--tokens`` greedy steps. Random weights: speed
does not depend on what the model learned.

    .venv/bin/python benchmarks/decode.py --json decode.json
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import write_json

from glam.config import resolve
from glam.inference.decode import decode_step, prefill
from glam.inference.sampling import Sampler
from glam.model.init import init_params


def decode_seconds(cfg, batch: int, prompt: int, tokens: int) -> float:
    params = init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    prompts = jnp.asarray(rng.integers(4, cfg.model.vocab_size, (batch, prompt)), jnp.int32)
    positions = jnp.tile(jnp.arange(prompt, dtype=jnp.int32), (batch, 1))
    active = jnp.ones((batch,), bool)
    sampler = Sampler()

    def generate() -> float:
        state, tok = prefill(
            cfg, params, prompts, positions, jnp.ones_like(prompts), jax.random.key(1), sampler=sampler,
            cache_len=prompt + tokens + 1,
        )  # fmt: skip
        jax.block_until_ready(tok)
        start = time.perf_counter()
        for _ in range(tokens):
            state, tok = decode_step(cfg, params, state, tok, active, sampler=sampler)
        jax.block_until_ready(tok)
        return time.perf_counter() - start

    generate()  # compile
    return generate()


def run(args) -> dict:
    times: dict[str, list[float]] = {name: [] for name in args.presets}
    cfgs = {name: resolve(name, args.set) for name in args.presets}
    for _ in range(args.repeats):
        for name, cfg in cfgs.items():
            times[name].append(decode_seconds(cfg, args.batch, args.prompt, args.tokens))
    rows = []
    for name in args.presets:
        tps = args.batch * args.tokens / float(np.median(times[name]))
        rows.append({"preset": name, "tokens_per_second": tps})
        print(f"{name:12s} {tps:10.0f} tok/s", flush=True)
    for row in rows:
        row["ratio_to_last"] = row["tokens_per_second"] / rows[-1]["tokens_per_second"]
    return {"benchmark": "decode", "settings": vars(args), "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "tiny-dense"], help="the last one is the baseline")
    p.add_argument("--set", nargs="*", default=[], help="dotted overrides for every preset")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    write_json(args.json, run(args))


if __name__ == "__main__":
    main()
