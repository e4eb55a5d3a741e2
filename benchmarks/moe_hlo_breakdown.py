"""Where the MoE layer's work goes, counted (not timed) from its compiled HLO (docs/benchmarks.md §1).

For each (E, dispatch) the jitted forward+backward of ``benchmarks/moe_layer.py`` is compiled (no
run) and every kernel of the optimised HLO is put in one class by the most telling op it contains
(a fusion takes its body's first match in ``KINDS`` order): FLOPs are the matrix products'
(``glam.plan.cost.dot_flops``), bytes are each kernel's operands plus result (``glam.plan.cost``'s
HBM-traffic rule, but gathers and in-place updates move only what they pick: ``kernel_bytes``), both
with loop trip counts applied (``glam.plan.hlo.multiplicities``; every
branch of a conditional counts, so the dropless path's skipped padding blocks are included: an
upper bound). XLA's own ``cost_analysis()`` totals, which visit a loop body once, are printed beside.

    .venv/bin/python benchmarks/moe_hlo_breakdown.py --json moe_hlo.json
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import jax
import jax.numpy as jnp
from common import add_layer_shape_args, write_json
from moe_layer import dense_step, moe_step

from glam.plan import cost, hlo

#: kernel classes, most telling first: a kernel is the first class any of its ops falls in
KINDS = {
    "dot": {"dot", "convolution"},
    "sort": {"sort"},
    "scatter": {"scatter"},
    "in-place update": {"dynamic-update-slice"},
    "gather": {"gather", "dynamic-slice"},
    "cumsum/reduce-window": {"reduce-window"},
    "reduce": {"reduce"},
    "select/one-hot": {"select", "compare"},
    "transpose/copy": {"transpose", "copy", "concatenate", "pad", "slice", "broadcast", "reshape", "iota"},
}


def kind_of(ins: hlo.Instruction, module: hlo.Module) -> str:
    ops = {ins.opcode}
    if ins.opcode == "fusion":
        for body in hlo._callees(ins.attrs, "calls"):
            ops |= {i.opcode for i in module.computations.get(body, [])}
    for kind, names in KINDS.items():
        if ops & names:
            return kind
    return "elementwise/other"


def kernel_bytes(kind: str, ins: hlo.Instruction, symbols: dict[str, str]) -> float:
    """Operands plus result, except: a gather/slice reads only what it picks (its result's size), not
    the table it indexes (the block scan slices one expert's [M, F] out of [E, M, F] per block); an
    in-place update (a scan stacking its outputs, a weight gradient's ``.at[e].add``) reads and
    writes only the update, not the buffer it aliases."""
    result = hlo.shape_bytes(ins.shape)
    operands = sorted(hlo.shape_bytes(s) for s in hlo.operand_shapes(ins, symbols))
    if kind == "gather" and operands:
        operands[-1] = min(operands[-1], result)
    if kind == "in-place update" and operands:
        return 2 * sum(operands[:-1])
    return result + sum(operands)


def breakdown(compiled) -> dict:
    module = hlo.parse_module(compiled.as_text())
    mult, _ = hlo.multiplicities(module)
    fused = cost._fused(module)
    flops, moved = defaultdict(float), defaultdict(float)
    for comp, m, symbols, ins in hlo.executed(module, mult):
        if comp in fused or ins.opcode in cost.FREE_OPS:
            continue
        kind = kind_of(ins, module)
        bodies = [ins] + [i for b in hlo._callees(ins.attrs, "calls") for i in module.computations.get(b, [])]
        body_symbols = {**symbols, **{i.name: i.shape for i in bodies}}
        flops[kind] += m * sum(cost.dot_flops(i, body_symbols) for i in bodies)
        moved[kind] += m * kernel_bytes(kind, ins, symbols)
    xla = compiled.cost_analysis()
    xla = xla[0] if isinstance(xla, list) else xla
    return {
        "flops": dict(flops),
        "bytes": dict(moved),
        "xla_flops": float(xla.get("flops", 0.0)),
        "xla_bytes_accessed": float(xla.get("bytes accessed", 0.0)),
    }


def run(args) -> dict:
    dtype = jnp.dtype(args.dtype)
    x = jax.random.normal(jax.random.key(1), (args.tokens // args.group, args.group, args.d_model), dtype)
    dense, w = dense_step(args.d_model, args.ffn, dtype)
    rows = [{"name": "dense", **breakdown(dense.lower(w, x).compile())}]
    for E in args.experts:
        for dispatch, cf in (("index", args.cf), ("dropless", args.cf)):
            step, state = moe_step(E, cf, dispatch, args.d_model, args.ffn, args.group, dtype)
            rows.append({"name": f"E={E} {dispatch}", **breakdown(step.lower(state, x).compile())})
    for row in rows:
        total_f, total_b = sum(row["flops"].values()), sum(row["bytes"].values())
        parts = ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in sorted(row["bytes"].items(), key=lambda kv: -kv[1]))
        print(f"{row['name']:14s} dot {total_f / 1e9:6.1f} GFLOP, {total_b / 1e6:7.0f} MB: {parts}", flush=True)
    return {"benchmark": "moe_hlo_breakdown", "settings": vars(args), "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_layer_shape_args(p, experts=[8, 64])
    p.add_argument("--cf", type=float, default=2.0, help="capacity factor of the index path")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    write_json(args.json, run(args))


if __name__ == "__main__":
    main()
