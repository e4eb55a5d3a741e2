"""MaxText's ``RoutedMoE`` at §1's shapes, forward+backward: a timing worker that ``peers.py`` drives.

MaxText 0.2.5 needs Python >= 3.12 and JAX >= 0.11.1, so it lives in a side virtualenv, never in glam's:

    ~/.pyenv/versions/3.12.1/bin/python -m venv ../maxtext-venv
    ../maxtext-venv/bin/pip install maxtext==0.2.5 'jax>=0.11.1' 'flax>=0.12.9' aqtp qwix tokamax omegaconf pydantic
    .venv/bin/python benchmarks/peers.py --maxtext-python ../maxtext-venv/bin/python

It imports nothing of glam. Variants (all fp32, routed per sequence of 1,024 tokens as glam's groups):
``dense`` is §1's baseline (a ReLU FFN of width 2F, a 2-D matmul) built in this process's JAX, so MaxText's
times have a denominator from the same XLA; ``cf1.25`` / ``cf2.0`` are MaxText's capacity path
(``sparse_matmul=False``: GShard dispatch/combine einsums) with glam's capacity C = 1024 · cf / E slots per
expert and sequence. MaxText counts capacity per *assignment* (C = ⌈1024 · k / E⌉ · its factor), so its
factor is cf / k: 0.625 and 1.0 give the same slots, hence the same expert FLOPs, as glam's 1.25 and 2.0;
``dropless`` is its ``sparse_matmul=True, megablox=False`` path (sort by expert, ``jax.lax.ragged_dot``).
MaxText's experts are gated SiLU (three M×F' matrices); F' = 2F/3 gives glam's activated FLOPs.

Protocol: prints one JSON line ``{"ready": [variant, ...]}`` once every variant is compiled and has run
once; then for each variant name read from stdin it runs that variant once and prints ``done``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh


def dense_step(M: int, F: int):
    k1, k2 = jax.random.split(jax.random.key(0))
    w = {"w1": jax.random.normal(k1, (M, 2 * F)) * M**-0.5, "w2": jax.random.normal(k2, (2 * F, M)) * F**-0.5}

    @jax.jit
    def step(w, x):
        def loss(w, x):
            h = jax.nn.relu(x.reshape(-1, M) @ w["w1"])
            return jnp.mean(jnp.square(h @ w["w2"]))

        return jax.grad(loss, argnums=(0, 1))(w, x)

    return lambda x: step(w, x)


def maxtext_step(E: int, M: int, F: int, tokens: int, seq: int, capacity_factor: float, sparse: bool):
    try:
        from maxtext.configs import pyconfig
        from maxtext.layers import moe
        from maxtext.layers.initializers import nd_dense_init
        from maxtext.utils import maxtext_utils
        from maxtext.utils.globals import MAXTEXT_PKG_DIR
    except ImportError as e:
        raise SystemExit(
            f"error: MaxText does not import in {sys.executable} ({e}); set up the side virtualenv with the "
            "commands at the top of benchmarks/peer_maxtext.py (docs/benchmarks.md §4)"
        ) from None

    cfg = pyconfig.initialize(
        [None, os.path.join(MAXTEXT_PKG_DIR, "configs", "base.yml")],
        run_name="glam_peer",
        enable_checkpointing=False,
        dtype="float32",
        weight_dtype="float32",
        base_emb_dim=M,
        base_mlp_dim=2 * F // 3,
        base_moe_mlp_dim=2 * F // 3,
        num_experts=E,
        num_experts_per_tok=2,
        sparse_matmul=sparse,
        megablox=False,
        capacity_factor=capacity_factor,
        max_target_length=seq,
        per_device_batch_size=tokens // seq,
        load_balance_loss_weight=0.01,
    )
    mesh = Mesh(maxtext_utils.create_device_mesh(cfg), cfg.mesh_axes)
    layer = moe.RoutedMoE(
        config=cfg,
        num_experts=E,
        num_experts_per_tok=2,
        mesh=mesh,
        kernel_init=nd_dense_init(1.0, "fan_in", "truncated_normal"),
        kernel_axes=("embed", "mlp"),
        intermediate_dim=2 * F // 3,
        dtype=jnp.float32,
        rngs=nnx.Rngs(params=0),
    )
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

    @jax.jit
    def step(params, x):
        def loss(params, x):
            y, lb_loss, _ = nnx.merge(graphdef, params, rest)(x)
            aux = 0.0 if lb_loss is None else lb_loss
            return jnp.mean(jnp.square(y.astype(jnp.float32))) + aux

        return jax.grad(loss, argnums=(0, 1))(params, x)

    def run(x):
        with jax.set_mesh(mesh):
            return step(params, x)

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experts", type=int, required=True)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--ffn", type=int, default=1024)
    p.add_argument("--group", type=int, default=1024, help="sequence length: MaxText routes per sequence")
    args = p.parse_args()
    if args.tokens % args.group:
        p.error(f"--tokens {args.tokens} must be a multiple of --group {args.group} (MaxText routes per sequence)")
    E, M, F, T, S = args.experts, args.d_model, args.ffn, args.tokens, args.group
    x = jax.random.normal(jax.random.key(1), (T // S, S, M))
    fns = {
        "dense": dense_step(M, F),
        "cf1.25": maxtext_step(E, M, F, T, S, 1.25 / 2, sparse=False),  # = glam's cf 1.25 slots (see above)
        "cf2.0": maxtext_step(E, M, F, T, S, 2.0 / 2, sparse=False),
        "dropless": maxtext_step(E, M, F, T, S, -1.0, sparse=True),
    }
    for fn in fns.values():
        jax.block_until_ready(fn(x))
    out = sys.stdout
    sys.stdout = sys.stderr  # MaxText logs with print: keep the protocol's stream clean
    out.write(json.dumps({"ready": list(fns), "jax": jax.__version__}) + "\n")
    out.flush()
    for line in sys.stdin:
        jax.block_until_ready(fns[line.strip()](x))
        out.write("done\n")
        out.flush()


if __name__ == "__main__":
    main()
