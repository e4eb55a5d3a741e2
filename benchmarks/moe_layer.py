"""MoE FFN layer forward+backward time over a dense FFN of equal activated FLOPs (issue 2a).

Shapes (issue): T = 8192 tokens, M = 256, F = 1024, routed in groups of S_g = 1024 (one GLaM sequence).
Each token activates two non-gated experts, 2 · 2·M·F multiply-adds; the dense baseline is the
non-gated FFN of width 2F with the same activation, act(x W1[M, 2F]) W2[2F, M]: exactly the same
activated FLOPs. With capacity C = S_g · cf / E (reference doc §3) the capacity paths compute
cf × those FLOPs (cf = 2 fits every assignment at perfect balance); dropless computes what is routed.

    .venv/bin/python benchmarks/moe_layer.py --json moe_layer.json
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from common import add_layer_shape_args, interleaved, write_json
from flax import nnx

from glam.config import ModelConfig, MoEConfig
from glam.model.moe.gating import capacity
from glam.model.moe.layer import MoEFFN


def moe_step(E: int, cf: float, dispatch: str, M: int, F: int, group: int, dtype) -> callable:
    """A jitted fwd+bwd of ``MoEFFN`` (router, gating, dispatch, experts, combine) → zero-arg thunk."""
    mcfg = ModelConfig(d_model=M, ffn_dim=F, num_layers=2, num_heads=2, head_dim=4)
    moe = MoEConfig(num_experts=E, capacity_factor_train=cf, group_size=group, dispatch=dispatch)
    graphdef, state = nnx.split(MoEFFN(mcfg, moe, rngs=nnx.Rngs(0)))

    @jax.jit
    def step(state, x):
        def loss(state, x):
            y, stats = nnx.merge(graphdef, state)(x, train=True)
            return jnp.mean(jnp.square(y.astype(jnp.float32))) + 0.01 * stats["aux_loss"]

        return jax.grad(loss, argnums=(0, 1))(state, x)

    return step, state


def experts_step(E: int, cf: float, M: int, F: int, group: int, tokens: int, dtype) -> callable:
    """The floor of every capacity path: fwd+bwd of the experts alone on filled [E, G, C, M] buffers
    (``MoEFFN.experts``), no router, gating, gathers or combine: what the experts' batched matmuls cost."""
    mcfg = ModelConfig(d_model=M, ffn_dim=F, num_layers=2, num_heads=2, head_dim=4)
    moe = MoEConfig(num_experts=E, capacity_factor_train=cf, group_size=group)
    graphdef, state = nnx.split(MoEFFN(mcfg, moe, rngs=nnx.Rngs(0)))
    C = capacity(group, E, cf)  # the layer's own capacity rule, so the buffers are the capacity paths' buffers
    xe = jax.random.normal(jax.random.key(2), (E, tokens // group, C, M), dtype)

    @jax.jit
    def step(state, xe):
        def loss(state, xe):
            return jnp.mean(jnp.square(nnx.merge(graphdef, state).experts(xe).astype(jnp.float32)))

        return jax.grad(loss, argnums=(0, 1))(state, xe)

    return lambda: step(state, xe)


def dense_step(M: int, F: int, dtype):
    k1, k2 = jax.random.split(jax.random.key(0))
    w = {"w1": jax.random.normal(k1, (M, 2 * F)) * M**-0.5, "w2": jax.random.normal(k2, (2 * F, M)) * F**-0.5}

    @jax.jit
    def step(w, x):
        def loss(w, x):
            x = x.reshape(-1, M)  # [T, M]: a 2D matmul is faster than the batched [G, S, M] one on CPU
            h = jax.nn.relu(x @ w["w1"].astype(dtype))
            return jnp.mean(jnp.square((h @ w["w2"].astype(dtype)).astype(jnp.float32)))

        return jax.grad(loss, argnums=(0, 1))(w, x)

    return step, w


def run(args) -> dict:
    dtype = jnp.dtype(args.dtype)
    x = jax.random.normal(jax.random.key(1), (args.tokens // args.group, args.group, args.d_model), dtype)
    rows = []
    for E in args.experts:
        dense, w = dense_step(args.d_model, args.ffn, dtype)
        fns = {"dense": lambda dense=dense, w=w: dense(w, x)}
        for dispatch in args.dispatch:
            for cf in [args.cfs[0]] if dispatch == "dropless" else args.cfs:
                step, state = moe_step(E, cf, dispatch, args.d_model, args.ffn, args.group, dtype)
                fns[f"{dispatch}@{cf}"] = lambda step=step, state=state: step(state, x)
        for cf in args.experts_only:
            fns[f"experts-only@{cf}"] = experts_step(E, cf, args.d_model, args.ffn, args.group, args.tokens, dtype)
        times = interleaved(fns, args.repeats)
        for name, seconds in times.items():
            if name == "dense":
                continue
            dispatch, cf = name.split("@")
            rows.append(
                {
                    "experts": E,
                    "dispatch": dispatch,
                    "capacity_factor": None if dispatch == "dropless" else float(cf),  # experts-only: the floor
                    "seconds": seconds,
                    "dense_seconds": times["dense"],
                    "ratio_to_dense": seconds / times["dense"],
                }
            )
            print(f"E={E:3d} {name:14s} {seconds * 1e3:8.1f} ms  {seconds / times['dense']:.2f}x dense", flush=True)
    return {"benchmark": "moe_layer", "settings": vars(args), "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_layer_shape_args(p, experts=[8, 16, 64])
    p.add_argument("--cfs", type=float, nargs="+", default=[1.0, 1.25, 2.0])
    p.add_argument("--dispatch", nargs="+", default=["einsum", "index", "dropless"])
    p.add_argument(
        "--experts-only",
        type=float,
        nargs="*",
        default=[],
        metavar="CF",
        help="also time the experts alone on filled capacity buffers at these cf (the floor of the capacity paths)",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    write_json(args.json, run(args))


if __name__ == "__main__":
    main()
