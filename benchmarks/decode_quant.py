"""Decode with weights stored in bfloat16 or int8 against float32 (issue 24 §3): step time and held-out loss.

Question: does storing the weights in fewer bytes lower a decode step's time on this CPU (a step is bound
by reading weights, docs/benchmarks.md §5), and what does it cost in loss? Weight-only: the model still
computes in float32; each stored weight is turned back into float32 inside the jitted step, right before
the model uses it ("dequantized at the matmul"; XLA decides whether that fuses into the matmul or
materialises a float32 copy per step, which is what this measures).

- ``bfloat16``: every float weight of two or more dimensions stored as bfloat16.
- ``int8``: the same weights stored as int8 with one float32 scale per channel: symmetric, scale =
  max |w| / 127 over the d_model axis (``embed``/``expert_embed``), so one scale per output feature
  of the input projections and per input feature of the output projections, per expert and per layer.
  The router (fp32 by design), norms and relative-bias tables stay float32.

Timed as ``benchmarks/decode.py`` times: a prefill of B random prompts (float32, untimed), then
``--tokens`` greedy steps, modes interleaved within every repeat, medians. Loss: mean negative
log-likelihood per token of ``--heldout-tokens`` tokens of ``--text`` (text the model never trained on)
with the dequantised weights, beside float32's. Needs a trained ``--checkpoint`` for the loss to mean
anything; without one (``--preset``, random weights) only the times are reported.

    .venv/bin/python benchmarks/decode_quant.py --checkpoint runs/demo --batch 1 8 64 --json decode_quant.json
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from common import write_json
from decode import random_prompts

from glam.inference.decode import decode_params, decode_step, prefill
from glam.inference.sampling import Sampler

MODES = ("float32", "bfloat16", "int8")
D_MODEL_AXES = ("embed", "expert_embed")  # the axis int8 scales are taken over
DEFAULT_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpus" / "books" / "gutenberg"


class Int8(NamedTuple):
    """A weight as int8 values and float32 scales (broadcast over the reduced axis): w ≈ q · scale."""

    q: jax.Array
    scale: jax.Array


def quantize(params: dict, axes: dict, mode: str) -> dict:
    """The parameters with their matrices stored in ``mode`` (see the module docstring)."""

    def one(w, names):
        if mode == "float32" or w.dtype != jnp.float32 or w.ndim < 2:
            return w
        if mode == "bfloat16":
            return w.astype(jnp.bfloat16)
        axis = next((i for i, n in enumerate(names) if n in D_MODEL_AXES), None)
        if axis is None:  # the router and anything without a d_model axis stay float32
            return w
        scale = jnp.maximum(jnp.max(jnp.abs(w), axis=axis, keepdims=True), 1e-30) / 127.0
        return Int8(jnp.clip(jnp.round(w / scale), -127, 127).astype(jnp.int8), scale)

    return jax.tree.map(one, params, axes)


def dequantize(tree):
    """Every stored weight back to float32 (inside a jitted function: at the matmul)."""

    def one(x):
        return x.q.astype(jnp.float32) * x.scale if isinstance(x, Int8) else x.astype(jnp.float32)

    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, Int8))


def stored_bytes(tree) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(tree))


@functools.partial(jax.jit, static_argnames=("cfg", "sampler"), donate_argnames=("state",))
def quant_step(cfg, stored, state, tokens, active, *, sampler):
    return decode_step(cfg, dequantize(stored), state, tokens, active, sampler=sampler)


def timer(cfg, params: dict, stored, batch: int, prompt: int, tokens: int):
    """Seconds for ``tokens`` decode steps reading the weights as ``stored`` (after an untimed prefill)."""
    prompts, positions = random_prompts(cfg, batch, prompt)
    active, sampler = jnp.ones((batch,), bool), Sampler()

    def seconds() -> float:
        state, tok = prefill(
            cfg, params, prompts, positions, jnp.ones_like(prompts), jax.random.key(1), sampler=sampler,
            cache_len=prompt + tokens + 1,
        )  # fmt: skip
        jax.block_until_ready(tok)
        start = time.perf_counter()
        for _ in range(tokens):
            state, tok = quant_step(cfg, stored, state, tok, active, sampler=sampler)
        jax.block_until_ready(tok)
        return time.perf_counter() - start

    return seconds


def heldout_loss(cfg, params: dict, tokenizer, args) -> float:
    """Mean negative log-likelihood per token of the first ``--heldout-tokens`` tokens of ``--text``."""
    from glam.inference.scoring import loglikelihood_rolling

    path = Path(args.text)
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    ids = tokenizer.encode(files[0].read_text("utf-8", errors="replace")[: 20 * args.heldout_tokens])
    (ll, n), *_ = loglikelihood_rolling(cfg, params, [ids[: args.heldout_tokens]], bos_id=tokenizer.bos_id)
    return -ll / n


def load(args):
    if args.checkpoint:
        from glam.checkpoint import load_for_inference

        return load_for_inference(args.checkpoint)
    from glam.config import resolve
    from glam.model.init import init_params

    cfg = resolve(args.preset, args.set)
    return cfg, init_params(cfg, jax.random.key(0)), None


def run(args) -> dict:
    from glam.model.init import param_axes

    cfg, params, tokenizer = load(args)
    axes = param_axes(cfg)
    stored = {m: quantize(params, axes, m) for m in MODES}
    split = {m: decode_params(s) for m, s in stored.items()}
    timers = {(m, b): timer(cfg, params, split[m], b, args.prompt, args.tokens) for b in args.batch for m in MODES}
    for t in timers.values():
        t()  # compile
    times: dict[tuple, list[float]] = {k: [] for k in timers}
    for _ in range(args.repeats):
        for b in args.batch:
            for m in MODES:  # modes alternate within every batch of every repeat
                times[m, b].append(timers[m, b]())
    rows = []
    for b in args.batch:
        base = float(np.median(times["float32", b]))
        for m in MODES:
            t = float(np.median(times[m, b]))
            rows.append(
                {"mode": m, "batch": b, "tokens_per_second": b * args.tokens / t, "time_ratio_to_float32": t / base}
            )
            print(
                f"B={b:<3d} {m:9s} {rows[-1]['tokens_per_second']:9.0f} tok/s  {t / base:5.2f}x float32's time",
                flush=True,
            )
    out = {"benchmark": "decode_quant", "model": cfg.name, "settings": vars(args), "rows": rows,
           "stored_bytes": {m: stored_bytes(s) for m, s in stored.items()}}  # fmt: skip
    if tokenizer is not None:
        out["heldout_nll"] = {m: heldout_loss(cfg, dequantize(stored[m]), tokenizer, args) for m in MODES}
        print(f"held-out NLL per token: {out['heldout_nll']}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="a trained run (for the loss); default: --preset, random")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--set", nargs="*", default=[], help="dotted overrides (random-weight model)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens before the decode steps")
    p.add_argument("--tokens", type=int, default=64, help="decode steps timed")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--text", default=str(DEFAULT_TEXT), help="held-out text (file or folder of .txt)")
    p.add_argument("--heldout-tokens", type=int, default=8192)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    write_json(args.json, run(args))


if __name__ == "__main__":
    main()
