"""glam's MoE layer against peers at the same shapes, forward+backward, in one run (issue 2d).

- ``naive-jax``: a Python loop over experts; each expert runs on every token and its output is
  weighted by the token's (top-2, renormalised) gate for that expert, zero elsewhere. Static shapes,
  so it costs E/2 × the activated FLOPs: the obvious JAX MoE one writes first.
- ``hf-mixtral``: Hugging Face transformers' ``MixtralSparseMoeBlock`` on torch CPU (the optional
  ``bench`` extra: ``pip install -e '.[bench]'``). Mixtral experts are gated (three M×F' matrices);
  F' = 2F/3 gives the same activated FLOPs as glam's two-matrix experts of width F.
Both peers are dropless, so glam is shown with ``dropless`` and with ``index`` at cf = 1.25.

    .venv/bin/python benchmarks/peers.py --json peers.json
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
from common import add_layer_shape_args, interleaved, write_json
from moe_layer import moe_step


def naive_jax(E: int, M: int, F: int):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    w = {
        "router": jax.random.normal(k1, (M, E)) * M**-0.5,
        "w_in": jax.random.normal(k2, (E, M, F)) * M**-0.5,
        "w_out": jax.random.normal(k3, (E, F, M)) * F**-0.5,
    }

    def layer(w, x):  # x [T, M]
        probs = jax.nn.softmax(x @ w["router"], axis=-1)
        top, idx = jax.lax.top_k(probs, 2)
        gate = jnp.sum(jax.nn.one_hot(idx, E) * (top / jnp.sum(top, -1, keepdims=True))[..., None], axis=1)  # [T, E]
        y = jnp.zeros_like(x)
        for e in range(E):
            y = y + gate[:, e : e + 1] * (jax.nn.relu(x @ w["w_in"][e]) @ w["w_out"][e])
        return y

    step = jax.jit(jax.grad(lambda w, x: jnp.mean(jnp.square(layer(w, x))), argnums=(0, 1)))
    return step, w


def hf_mixtral(E: int, M: int, F: int, tokens: int):
    """A thunk for fwd+bwd of transformers' Mixtral sparse MoE block, or None without the extra."""
    try:
        import torch
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = MixtralConfig(hidden_size=M, intermediate_size=2 * F // 3, num_local_experts=E, num_experts_per_tok=2)
    block = MixtralSparseMoeBlock(cfg)
    x = torch.randn(tokens // 1024, 1024, M, requires_grad=True)

    def run():
        out = block(x)
        y = out[0] if isinstance(out, tuple) else out
        y.square().mean().backward()
        return None

    return run


def run(args) -> dict:
    M, F, T = args.d_model, args.ffn, args.tokens
    x = jax.random.normal(jax.random.key(1), (T // 1024, 1024, M))
    rows = []
    for E in args.experts:
        fns = {}
        for name, dispatch, cf in (("glam-dropless", "dropless", 1.0), ("glam-index@1.25", "index", 1.25)):
            step, state = moe_step(E, cf, dispatch, M, F, 1024, jnp.float32)
            fns[name] = lambda step=step, state=state: step(state, x)
        naive, w = naive_jax(E, M, F)
        fns["naive-jax"] = lambda naive=naive, w=w: naive(w, x.reshape(T, M))
        hf = hf_mixtral(E, M, F, T)
        if hf is not None:
            fns["hf-mixtral"] = hf
        times = interleaved(fns, args.repeats)
        best = min(times["glam-dropless"], times["glam-index@1.25"])
        for name, seconds in times.items():
            rows.append({"experts": E, "impl": name, "seconds": seconds, "ratio_to_best_glam": seconds / best})
            print(f"E={E:3d} {name:16s} {seconds * 1e3:8.1f} ms  {seconds / best:.2f}x best glam", flush=True)
    return {"benchmark": "peers", "settings": vars(args), "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_layer_shape_args(p, experts=[8, 64], group=False)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    write_json(args.json, run(args))


if __name__ == "__main__":
    main()
