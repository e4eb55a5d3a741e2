"""FLOPs and HBM traffic of a compiled step, counted from its HLO with loop trip counts applied.

XLA's own ``compiled.cost_analysis()`` visits a ``while`` body once, so for a scanned model it counts
one (MoE, dense) block of the L/2; this count multiplies each instruction by its computation's
multiplicity (``glam.plan.hlo.multiplicities``).

- FLOPs: matrix products only, 2 · (result elements) · (contracted size) per ``dot`` (convolutions
  too, as 2 · result elements · kernel elements / output features). Elementwise work is left out:
  it is memory-bound and the traffic term below covers it.
- HBM traffic: for every kernel outside a fusion (each fusion is one kernel), the bytes of its
  operands plus its result. Free ops (parameters, tuples, bitcasts, constants, control flow) are
  skipped. This is the traffic of the program *as compiled for CPU*, whose fusion decisions differ
  from a TPU's or GPU's: read it as an order of magnitude.
"""

from __future__ import annotations

import math
import re

from glam.plan import hlo

FREE_OPS = frozenset(
    "parameter tuple get-tuple-element bitcast constant while call conditional after-all partition-id replica-id "
    "opt-barrier add-dependency".split()
)


def dot_flops(ins: hlo.Instruction, symbols: dict[str, str]) -> float:
    """2 · result elements · contracted size of one ``dot`` (0 for any other opcode)."""
    if ins.opcode != "dot":
        return 0.0
    lhs = hlo.arrays(hlo.operand_shapes(ins, symbols)[0])
    result = hlo.arrays(ins.shape)
    if not lhs or not result:
        return 0.0
    dims = lhs[0][1]
    m = re.search(r"lhs_contracting_dims=\{([^}]*)\}", ins.attrs)
    contracted = [int(d) for d in m.group(1).split(",") if d.strip()] if m else []
    return 2.0 * math.prod(result[0][1]) * math.prod(dims[d] for d in contracted)


def _fused(module: hlo.Module) -> set[str]:
    """Computations that are the bodies of fusions (their instructions are not kernels of their own)."""
    out = set()
    for instructions in module.computations.values():
        for ins in instructions:
            if ins.opcode == "fusion":
                out.update(hlo._callees(ins.attrs, "calls"))
    return out


def count_cost(module: hlo.Module, apply_trip_counts: bool = True) -> dict:
    """{"dot_flops", "hbm_bytes"} per device per step (``apply_trip_counts=False``: loop bodies once, as
    XLA's cost analysis counts them)."""
    if apply_trip_counts:
        mult, _ = hlo.multiplicities(module)
    else:
        mult = {c: 1.0 for c in hlo.multiplicities(module)[0]}
    fused = _fused(module)
    flops = traffic = 0.0
    for comp, m, symbols, ins in hlo.executed(module, mult):
        flops += m * dot_flops(ins, symbols)
        if comp not in fused and ins.opcode not in FREE_OPS:
            moved = hlo.shape_bytes(ins.shape) + sum(hlo.shape_bytes(s) for s in hlo.operand_shapes(ins, symbols))
            traffic += m * moved
    return {"dot_flops": flops, "hbm_bytes": traffic}
