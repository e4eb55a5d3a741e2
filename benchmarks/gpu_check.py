"""The device facts the GPU check needs: a measured bf16 matmul peak, and how ``ragged_dot`` lowers.

``jax.lax.ragged_dot`` (the dropless path's grouped matmul on GPU/TPU, ``glam.model.moe.dispatch``) is
a real grouped GEMM only where XLA has one for the backend and version; elsewhere it is expanded into
one masked dense matmul over all E groups (E× the FLOPs; what XLA:CPU does). Three independent signs,
all reported: the compiled HLO's op kinds (a ``ragged-dot`` instruction or a grouped-GEMM custom call
vs. a ``dot`` over a masked [E, R, M] operand), XLA's counted FLOPs over the grouped GEMM's 2·R·M·F,
and the wall time over a dense [R, M] × [M, F] matmul of the same FLOPs. The verdict reads the counted
FLOPs (≈ 1: grouped; ≈ E: dense expansion), with the time ratio as the measured check.

    .venv/bin/python benchmarks/gpu_check.py --json gpu_check.json            # on the accelerator
    .venv/bin/python benchmarks/gpu_check.py --quick                          # small sizes, any CPU
"""

from __future__ import annotations

import argparse
import collections
import re

import jax
import jax.numpy as jnp
from common import interleaved, matmul_thunk, write_json


def ragged_lowering(R: int, M: int, F: int, E: int, dtype, repeats: int) -> dict:
    """How ``ragged_dot([R, M], [E, M, F], E equal groups)`` compiles here, and what it costs."""
    x = jax.random.normal(jax.random.key(0), (R, M), dtype)
    w = jax.random.normal(jax.random.key(1), (E, M, F), dtype)
    sizes = jnp.full((E,), R // E, jnp.int32)
    ragged = jax.jit(jax.lax.ragged_dot)
    compiled = ragged.lower(x, w, sizes).compile()
    hlo = compiled.as_text()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    grouped_flops = 2.0 * R * M * F
    flops_ratio = float((cost or {}).get("flops", float("nan"))) / grouped_flops
    ops = collections.Counter(re.findall(r"= [^ ]+ ([a-z][\w-]*)\(", hlo))
    targets = sorted(set(re.findall(r'custom_call_target="([^"]+)"', hlo)))
    masked = bool(re.search(rf"\[{E},{R},{M}\]", hlo))  # the dense expansion's masked copy of the rows
    dense = jax.jit(jnp.dot)
    w0 = w[0]
    times = interleaved({"ragged": lambda: ragged(x, w, sizes), "dense": lambda: dense(x, w0)}, repeats)
    native = "ragged-dot" in ops or any(re.search("ragged|grouped|gmm|triton", t, re.I) for t in targets)
    if native or flops_ratio < 1.5:
        verdict = "grouped GEMM (ragged_dot computes only the rows' own expert)"
    elif flops_ratio > 0.5 * E:
        verdict = f"dense expansion (every row times all {E} experts: ~{E}x the FLOPs)"
    else:
        verdict = "unclear (see the op kinds and the ratios)"
    return {
        "shape": {"R": R, "M": M, "F": F, "E": E, "dtype": jnp.dtype(dtype).name},
        "verdict": verdict,
        "hlo_ragged_dot_instruction": "ragged-dot" in ops,
        "hlo_custom_call_targets": targets,
        "hlo_masked_expansion_operand": masked,
        "hlo_op_kinds": dict(ops.most_common(12)),
        "counted_flops_over_grouped": flops_ratio,
        "time_over_dense_matmul": times["ragged"] / times["dense"],
        "ragged_seconds": times["ragged"],
        "dense_seconds": times["dense"],
    }


def run(args) -> dict:
    dtype = jnp.dtype(args.dtype)
    n = args.peak_n or (1024 if args.quick else 8192)
    fn, flops = matmul_thunk(n, dtype)
    peak = flops / interleaved({"matmul": fn}, args.repeats)["matmul"]
    print(f"measured {dtype.name} matmul peak ({n}^3): {peak / 1e12:.2f} TFLOP/s", flush=True)
    R, M, F = (2048, 256, 512) if args.quick else (16384, 1024, 4096)
    ragged = ragged_lowering(R, M, F, args.experts, dtype, args.repeats)
    print(f"ragged_dot: {ragged['verdict']}", flush=True)
    print(
        f"ragged_dot evidence: counted FLOPs / grouped GEMM's {ragged['counted_flops_over_grouped']:.2f}, "
        f"time / dense matmul {ragged['time_over_dense_matmul']:.2f}, "
        f"ragged-dot in HLO: {ragged['hlo_ragged_dot_instruction']}, custom calls: {ragged['hlo_custom_call_targets']}",
        flush=True,
    )
    return {"benchmark": "gpu_check", "peak_flops": peak, "peak_n": n, "ragged_dot": ragged, "settings": vars(args)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--peak-n", type=int, default=0, help="matmul size for the peak (0: 8192, 1024 with --quick)")
    p.add_argument("--experts", type=int, default=8, help="groups E of the ragged_dot check")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="small sizes (a CPU smoke run)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    write_json(args.json, run(args))


if __name__ == "__main__":
    main()
