"""A small reader for XLA's post-optimisation HLO text (``compiled.as_text()``).

Only what planning needs: computations and their instructions (name, result shape, opcode, operands,
attributes), the call graph with loop trip counts, so that every instruction gets a *multiplicity*
(how many times one step executes it), and the replica-group size of a collective. Each piece is a
small pure function over text, so it is tested on hand-written snippets as well as on real programs.

Multiplicity: the entry computation runs once; a ``while`` body runs trip-count times per run of its
caller (``known_trip_count`` in the backend config, else the one integer constant its condition
compares against, else 1 and the loop is reported as unknown); a ``calls=`` / ``branch_computations``
callee runs once per call (every branch of a conditional counted: an upper bound); ``to_apply``
computations (the scalar bodies of reduce, all-reduce, sort) are not kernels and are not counted.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass

#: bytes per element of each HLO primitive type (sub-byte types rounded to fractions)
DTYPE_BYTES = {
    "pred": 1,
    "s2": 0.25,
    "u2": 0.25,
    "s4": 0.5,
    "u4": 0.5,
    "s8": 1,
    "u8": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([^\]]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s*->\s*.*\{\s*$")
_COMMENT = re.compile(r"/\*.*?\*/")
_NAME = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*")


@dataclass(frozen=True)
class Instruction:
    name: str
    shape: str  # the result shape as printed, e.g. "f32[4,128]{1,0}" or a "(...)" tuple
    opcode: str
    operands: tuple[str, ...]  # operand names (without %)
    attrs: str  # everything after the operand list: dimensions=, replica_groups=, metadata, ...
    operand_shapes: tuple[str | None, ...] = ()  # shapes printed inline beside the operands, if any
    args: str = ""  # the raw text between the opcode's parentheses (a constant's value)


@dataclass(frozen=True)
class Module:
    computations: dict[str, list[Instruction]]
    entry: str


def arrays(shape: str) -> list[tuple[str, tuple[int, ...]]]:
    """Every array in a (possibly tuple) shape: [(dtype, dims)]; ``token[]`` and unknown types skipped."""
    out = []
    for dtype, dims in _ARRAY.findall(shape):
        if dtype not in DTYPE_BYTES:
            continue
        sizes = tuple(int(d.strip().lstrip("<=")) for d in dims.split(",") if d.strip())
        out.append((dtype, sizes))
    return out


def shape_bytes(shape: str) -> float:
    """Bytes of every array in ``shape`` (a tuple's elements summed)."""
    return float(sum(DTYPE_BYTES[t] * math.prod(d) for t, d in arrays(shape)))


def shape_elements(shape: str) -> int:
    return sum(math.prod(d) for _, d in arrays(shape))


def _closing(text: str, start: int) -> int:
    """Index of the bracket that closes the one at ``text[start]`` (``(``, ``{`` or ``[``)."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    stack = []
    for i in range(start, len(text)):
        c = text[i]
        if c in pairs:
            stack.append(pairs[c])
        elif stack and c == stack[-1]:
            stack.pop()
            if not stack:
                return i
    raise ValueError(f"unbalanced brackets in HLO line: {text[:120]!r}")


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, cur = [], 0, []
    for c in text:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    if "".join(cur).strip():
        parts.append("".join(cur))
    return [p.strip() for p in parts]


def parse_instruction(line: str) -> Instruction | None:
    """One instruction line → :class:`Instruction`; None for anything else."""
    line = _COMMENT.sub("", line)  # XLA numbers long lists: "/*index=5*/%x"
    m = _NAME.match(line)
    if not m:
        return None
    rest = line[m.end() :]
    if rest.startswith("("):
        end = _closing(rest, 0)
        shape, rest = rest[: end + 1], rest[end + 1 :].lstrip()
    else:
        shape, _, rest = rest.partition(" ")
    op = re.match(r"([a-z][\w\-]*)\(", rest)
    if not op:
        return None
    open_at = op.end() - 1
    close = _closing(rest, open_at)
    names, inline = [], []
    for part in _split_top(rest[open_at + 1 : close]):
        ref = re.search(r"%([\w.\-]+)\s*$", part)
        if ref:
            names.append(ref.group(1))
            prefix = part[: ref.start()].strip()
            inline.append(prefix or None)
    attrs = rest[close + 1 :].lstrip(", ")
    args = rest[open_at + 1 : close]
    return Instruction(m.group(1), shape, op.group(1), tuple(names), attrs, tuple(inline), args)


def parse_module(text: str) -> Module:
    """Computations of an HLO module in text form, keyed by name; the entry computation named."""
    computations: dict[str, list[Instruction]] = {}
    entry, current = None, None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header and not line.startswith((" ", "\t")):
            current = header.group(2)
            computations[current] = []
            if header.group(1):
                entry = current
            continue
        if current is None:
            continue
        if line.strip() == "}":
            current = None
            continue
        ins = parse_instruction(line)
        if ins is not None:
            computations[current].append(ins)
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    return Module(computations, entry)


def _callees(attrs: str, key: str) -> list[str]:
    m = re.search(rf"\b{key}=(\{{[^}}]*\}}|%?[\w.\-]+)", attrs)
    if not m:
        return []
    return [n.lstrip("%") for n in re.findall(r"%?([\w.\-]+)", m.group(1))]


def trip_count(ins: Instruction, module: Module) -> int | None:
    """Iterations of a ``while``: XLA's ``known_trip_count``, else the integer its condition compares to."""
    m = re.search(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)', ins.attrs)
    if m:
        return int(m.group(1))
    for cond in _callees(ins.attrs, "condition"):
        consts = [
            int(i.args)
            for i in module.computations.get(cond, [])
            if i.opcode == "constant" and re.match(r"[su](8|16|32|64)\[\]", i.shape) and re.fullmatch(r"-?\d+", i.args)
        ]
        if len(consts) == 1 and consts[0] > 0:
            return consts[0]
    return None


def multiplicities(module: Module) -> tuple[dict[str, float], int]:
    """How many times one run of the entry executes each computation; and the number of loops whose
    trip count could not be read (counted once)."""
    edges: dict[str, list[tuple[str, float]]] = defaultdict(list)
    unknown = 0
    for comp, instructions in module.computations.items():
        for ins in instructions:
            if ins.opcode == "while":
                n = trip_count(ins, module)
                if n is None:
                    unknown += 1
                    n = 1
                edges[comp] += [(b, float(n)) for b in _callees(ins.attrs, "body")]
                edges[comp] += [(c, float(n + 1)) for c in _callees(ins.attrs, "condition")]
            for key in ("calls", "branch_computations", "true_computation", "false_computation"):
                edges[comp] += [(c, 1.0) for c in _callees(ins.attrs, key)]
    order, seen = [], set()

    def visit(c: str) -> None:  # post-order DFS; the call graph is acyclic
        if c in seen:
            return
        seen.add(c)
        for callee, _ in edges.get(c, ()):
            visit(callee)
        order.append(c)

    visit(module.entry)
    mult = defaultdict(float, {module.entry: 1.0})
    for c in reversed(order):  # callers before callees
        for callee, factor in edges.get(c, ()):
            mult[callee] += mult[c] * factor
    return dict(mult), unknown


def group_size(attrs: str, num_devices: int) -> int | None:
    """Devices in each replica group of a collective, from any of XLA's three printed forms:
    ``{{0,1},{2,3}}`` (explicit), ``[G,N]<=[...]`` (iota: G groups of N), and
    ``mesh['axis_0'=4,'axis_1'=2] {'axis_1'}`` (named axes; ``'axis_0':(2)2`` is a sub-axis of size 2).
    ``{}`` means one group of all devices; None when no form is recognised."""
    m = re.search(r"replica_groups=", attrs)
    if not m:
        return None
    rest = attrs[m.end() :]
    if rest.startswith("{}"):
        return num_devices
    if rest.startswith("{{"):
        first = rest[2 : rest.index("}")]
        return len([x for x in first.split(",") if x.strip()])
    iota = re.match(r"\[(\d+),(\d+)\]<=", rest)
    if iota:
        return int(iota.group(2))
    mesh = re.match(r"mesh\[([^\]]*)\]", rest)
    if mesh:
        sizes = {k: int(v) for k, v in re.findall(r"'([^']+)'\s*=\s*(\d+)", mesh.group(1))}
        sel = re.search(r"\{\s*('[^}]*)\}", rest[mesh.end() :])
        if not sel:
            return math.prod(sizes.values())
        n = 1
        for part in _split_top(sel.group(1)):
            sub = re.fullmatch(r"'([^']+)'\s*:\s*\(\d+\)\s*(\d+)", part)
            if sub:
                n *= int(sub.group(2))
            else:
                n *= sizes.get(part.strip().strip("'"), 1)
        return n
    return None


def op_name(attrs: str) -> str:
    m = re.search(r'op_name="([^"]*)"', attrs)
    return m.group(1) if m else ""


def executed(module: Module, mult: dict[str, float]):
    """Yield ``(computation, times it runs per step, its symbol shapes, instruction)`` for every
    instruction of a computation that runs (``mult`` from :func:`multiplicities`)."""
    for comp, instructions in module.computations.items():
        m = mult.get(comp, 0.0)
        if not m:
            continue
        symbols = symbol_shapes(instructions)
        for ins in instructions:
            yield comp, m, symbols, ins


def symbol_shapes(instructions: list[Instruction]) -> dict[str, str]:
    """Result shape of each named instruction of one computation (its parameters included)."""
    return {i.name: i.shape for i in instructions}


def operand_shapes(ins: Instruction, symbols: dict[str, str]) -> list[str]:
    """The shape of each operand: printed inline, else looked up in its computation."""
    out = []
    for k, name in enumerate(ins.operands):
        inline = ins.operand_shapes[k] if k < len(ins.operand_shapes) else None
        out.append(inline or symbols.get(name, ""))
    return out
