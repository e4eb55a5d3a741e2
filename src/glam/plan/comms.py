"""Collectives of a compiled step: count, bytes each device sends, and the part of the model they serve.

Bytes convention (what one device must send for one execution, bandwidth-optimal ring algorithms,
n = devices in the replica group, I = the bytes of the collective's input on one device):

    all-gather           (n − 1) · I          = (n − 1)/n of the gathered output
    reduce-scatter       (n − 1)/n · I
    all-reduce           2 (n − 1)/n · I      (a reduce-scatter, then an all-gather)
    all-to-all           (n − 1)/n · I        (the 1/n addressed to itself stays)
    collective-permute   I                    (every device of a source → target pair)

Counts and bytes are per step: each instruction times its computation's multiplicity (loop trip
counts applied, ``glam.plan.hlo.multiplicities``). Categories, from shapes (the HLO carries no
model names beside its einsum strings):

- ``moe_dispatch_combine``: an all-to-all that moves exactly this device's share of one MoE capacity
  buffer [E, G, C, M] (reference doc §4: one exchange before the experts and one after);
- ``moe_token_gather``: an all-gather or all-reduce of the index dispatch's zero-padded token table
  [G, S_g + 1, M] (recognised by its S_g + 1 dimension): where GSPMD lowers that dispatch's gather by
  gathering every group's tokens to every device instead of an all-to-all (and the backward sums it);
- ``weight_gather``: an all-gather whose output has the shape of a parameter (or of one layer's
  slice of a stacked one), fully or partly gathered;
- ``gradient_reduction``: a reduce-scatter or all-reduce whose operand has a parameter's shape;
- ``activation``: everything else (tensor-parallel partial sums, MoE token gathers, norms, losses).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from typing import NamedTuple

from glam.plan import hlo

KINDS = ("all-to-all", "all-gather", "reduce-scatter", "all-reduce", "collective-permute")
CATEGORIES = ("moe_dispatch_combine", "moe_token_gather", "weight_gather", "gradient_reduction", "activation")


class MoEShapes(NamedTuple):
    """What identifies the MoE layer's collectives: this device's share of one [E, G, C, M] buffer
    (elements), the capacity C and the routing group size S_g."""

    buffer_elements: int
    capacity: int
    group_size: int


def collective_kind(opcode: str) -> str | None:
    """The collective an opcode performs (async ``-start`` halves count, ``-done`` halves do not)."""
    if opcode.endswith("-done"):
        return None
    base = opcode.removesuffix("-start")
    return base if base in KINDS else None


def bytes_sent(kind: str, input_bytes: float, n: int) -> float:
    """Bytes one device sends for one execution (the module docstring's convention)."""
    if kind == "collective-permute":
        return input_bytes
    if n <= 1:
        return 0.0
    frac = (n - 1) / n
    return {
        "all-gather": (n - 1) * input_bytes,
        "reduce-scatter": frac * input_bytes,
        "all-reduce": 2 * frac * input_bytes,
        "all-to-all": frac * input_bytes,
    }[kind]


def _squeeze(dims) -> tuple[int, ...]:
    return tuple(d for d in dims if d != 1)


def parameter_shapes(params: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> set[tuple[int, ...]]:
    """Every shape a parameter may take in the HLO: (global shape, shards per dim) → the shapes with any
    subset of dims split, for the whole array and for one layer's slice of a stacked [P, ...] one."""
    out = set()
    for shape, shards in params:
        for dims, split in ((shape, shards), (shape[1:], shards[1:])):
            choices = [(d,) if s == 1 else (d, d // s) for d, s in zip(dims, split)]
            out.update(_squeeze(c) for c in itertools.product(*choices))
    out.discard(())
    return out


def _token_table(shape: str, moe: MoEShapes | None) -> bool:
    return bool(moe) and any(moe.group_size + 1 in d for _, d in hlo.arrays(shape))


def classify(kind: str, operand_shapes: list[str], result_shape: str, weights: set, moe: MoEShapes | None) -> str:
    """The category of a collective that is not a reduction (module docstring)."""
    if kind == "all-to-all":
        if moe and sum(hlo.shape_elements(s) for s in operand_shapes) == moe.buffer_elements:
            if all(moe.capacity in d for _, d in hlo.arrays(" ".join(operand_shapes))):
                return "moe_dispatch_combine"
        return "activation"
    if kind == "all-gather":
        if _token_table(result_shape, moe):
            return "moe_token_gather"
        outs = [d for _, d in hlo.arrays(result_shape)]
        return "weight_gather" if outs and all(_squeeze(d) in weights for d in outs) else "activation"
    return "activation"


def classify_reduced(shape: str, weights: set, moe: MoEShapes | None) -> str:
    """The category of one operand of a reduce-scatter or all-reduce."""
    if _token_table(shape, moe):
        return "moe_token_gather"
    dims = [_squeeze(d) for _, d in hlo.arrays(shape)]
    return "gradient_reduction" if dims and dims[0] in weights else "activation"


def count_collectives(
    module: hlo.Module,
    num_devices: int,
    weights: set | None = None,
    moe: MoEShapes | None = None,
) -> dict:
    """Per-step collective counts and bytes sent per device, by kind and by category.

    ``weights``: shapes from :func:`parameter_shapes`; ``moe``: from :func:`moe_shapes` (None: no MoE layer).
    """
    weights = weights or set()
    mult, unknown_loops = hlo.multiplicities(module)
    by_kind = {k: {"count": 0.0, "bytes": 0.0} for k in KINDS}
    by_cat = {c: {"count": 0.0, "bytes": 0.0} for c in CATEGORIES}
    by_group: dict[int, float] = defaultdict(float)
    unknown_groups = 0
    for _, m, symbols, ins in hlo.executed(module, mult):
        kind = collective_kind(ins.opcode)
        if kind is None:
            continue
        shapes = hlo.operand_shapes(ins, symbols)
        n = 1 if kind == "collective-permute" else hlo.group_size(ins.attrs, num_devices)
        if n is None:
            unknown_groups += 1
            n = num_devices  # the widest group: an upper bound
        sent = bytes_sent(kind, sum(hlo.shape_bytes(s) for s in shapes), n) * m
        by_kind[kind]["count"] += m
        by_kind[kind]["bytes"] += sent
        by_group[n] += sent
        if kind in ("reduce-scatter", "all-reduce"):
            parts = defaultdict(float)
            for s in shapes:
                parts[classify_reduced(s, weights, moe)] += bytes_sent(kind, hlo.shape_bytes(s), n) * m
            main = max(parts, key=parts.get) if parts else "activation"
            by_cat[main]["count"] += m
            for cat, b in parts.items():
                by_cat[cat]["bytes"] += b
        else:
            cat = classify(kind, shapes, ins.shape, weights, moe)
            by_cat[cat]["count"] += m
            by_cat[cat]["bytes"] += sent
    total = sum(v["bytes"] for v in by_kind.values())
    return {
        "by_kind": {k: {"count": int(round(v["count"])), "bytes": v["bytes"]} for k, v in by_kind.items()},
        "by_category": {k: {"count": int(round(v["count"])), "bytes": v["bytes"]} for k, v in by_cat.items()},
        "bytes_per_device": total,
        "bytes_by_group_size": dict(sorted(by_group.items())),
        "unknown_trip_counts": unknown_loops,
        "unknown_replica_groups": unknown_groups,
        "convention": "bytes each device sends per step: all-gather (n-1)/n of its output, reduce-scatter and "
        "all-to-all (n-1)/n of the input, all-reduce 2(n-1)/n of the input, collective-permute the input",
    }


def moe_shapes(num_experts: int, groups: int, group_size: int, capacity: int, d_model: int, devices: int) -> MoEShapes:
    """E is split over data and M over model, so every device holds E·G·C·M / devices of a buffer."""
    return MoEShapes(math.prod((num_experts, groups, capacity, d_model)) // devices, capacity, group_size)
