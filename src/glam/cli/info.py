"""``glam info PRESET [key=value ...] [--json]``: layout, parameter counts and FLOPs of a model."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from glam.config import GLaMConfig, resolve
from glam.config.presets import PAPER_FIGURES
from glam.model.flops import model_size
from glam.model.moe.routers import BALANCERS, ROUTERS


def _every(start: int, stride: int, stop: int) -> str:
    """Layer indices start, start + stride, ... below stop: all of them when few, else elided."""
    ids = range(start, stop, stride)
    if len(ids) <= 4:
        return ", ".join(map(str, ids))
    return f"{ids[0]}, {ids[1]}, ..., {ids[-1]}"


def info(cfg: GLaMConfig) -> dict:
    """Everything ``glam info`` reports, as a JSON-ready dict (counted from real shapes)."""
    size = model_size(cfg)
    m = cfg.model
    paper = PAPER_FIGURES.get(cfg.name)
    L, E = m.num_layers, cfg.moe.num_experts
    # One entry per kind of layer (not per layer: L may be anything the config accepts).
    if cfg.is_moe:
        routing = ROUTERS[cfg.moe.router].label(cfg.moe)
        if BALANCERS[cfg.moe.balance].bias:
            routing += ", bias-balanced"
        shared = f", +{cfg.moe.shared_experts} shared" if cfg.moe.shared_experts else ""
        moe_ffn = f"moe({E} experts, {routing}{shared})"
        if cfg.moe.layers == "all":  # Mixtral / DeepSeek: every layer
            layout = [{"layers": _every(0, 1, L), "count": L, "ffn": moe_ffn}]
        else:  # GLaM / GShard: every other layer
            layout = [
                {"layers": _every(0, 2, L), "count": L // 2, "ffn": moe_ffn},
                {"layers": _every(1, 2, L), "count": L // 2, "ffn": "dense gated-GELU"},
            ]
    else:
        layout = [{"layers": _every(0, 1, L), "count": L, "ffn": "dense gated-GELU"}]
    mesh_note = ""
    if cfg.is_moe and E & (E - 1):  # device counts are powers of two; E is split over mesh.data
        mesh_note = (
            f"moe.num_experts={E} is not a power of two: experts are split over mesh.data, which must divide {E} "
            f"or be a multiple of it ({E}, {2 * E}, ...); on a power-of-two number of devices put the rest "
            "on mesh.model"
        )
    return {
        "name": cfg.name,
        "params_total": size.params_total,
        "params_activated": size.params_activated,
        "params_embedding": size.params_embedding,
        "params_experts": size.params_experts,
        "vocab_size": m.vocab_size,
        "num_layers": m.num_layers,
        "d_model": m.d_model,
        "ffn_dim": m.ffn_dim,
        "num_heads": m.num_heads,
        "head_dim": m.head_dim,
        "num_experts": cfg.moe.num_experts,
        "router": {"name": cfg.moe.router, "trains": ROUTERS[cfg.moe.router].trains} if cfg.is_moe else None,
        "balance": {"name": cfg.moe.balance, "trains": BALANCERS[cfg.moe.balance].trains} if cfg.is_moe else None,
        "train.seq_len": cfg.train.seq_len,  # S of the training rows (and of the FLOPs below)
        "model.max_seq_len": m.max_seq_len,  # the longest input scoring and generation take (longer: cut)
        "flops_per_token_train": size.flops_per_token_train,
        "flops_per_token_inference": size.flops_per_token_inference,
        "flops_formula": "train 6N + 12·L·A·S, inference 2N + 4·L·A·S (PaLM, Chowdhery et al. 2022, app. B)",
        "paper_params_total": paper.total if paper else None,
        "paper_params_activated": paper.activated if paper else None,
        "paper_note": paper.note if paper else "",
        "layout": layout,
        "mesh_note": mesh_note,
    }


def _fmt(n: float | None) -> str:
    if n is None:
        return "–"
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.4g}{unit}"
    return f"{n:.4g}"


def print_info(d: dict, console: Console) -> None:
    t = Table(
        title=f"{d['name']}: L={d['num_layers']} M={d['d_model']} F={d['ffn_dim']} "
        f"heads={d['num_heads']}x{d['head_dim']} E={d['num_experts']} V={d['vocab_size']}"
    )
    for col in ("", "glam (from shapes)", "paper (Table 4)", "ratio"):
        t.add_column(col)
    for key, label in (("params_total", "total parameters"), ("params_activated", "activated / token")):
        ours, theirs = d[key], d[f"paper_{key}"]
        ratio = f"{ours / theirs:.3f}" if theirs else "–"
        t.add_row(label, f"{ours:,} ({_fmt(ours)})", _fmt(theirs), ratio)
    t.add_row("train FLOPs / token", _fmt(d["flops_per_token_train"]), "–", "")
    t.add_row("inference FLOPs / token", _fmt(d["flops_per_token_inference"]), "–", "")
    console.print(t)
    moe_layers = sum(x["count"] for x in d["layout"] if x["ffn"].startswith("moe"))
    L = d["num_layers"]
    if moe_layers == L:
        layout = f"layout: {L} layers, a MoE FFN in every one (moe.layers=all)"
    elif moe_layers:
        layout = f"layout: {L} layers as {L // 2} (MoE, dense) pairs; {moe_layers} MoE layers (0, 2, 4, ...)"
    else:
        layout = f"layout: {L} dense layers"
    console.print(layout)
    console.print(f"FLOPs: {d['flops_formula']}, S = train.seq_len = {d['train.seq_len']}")
    console.print(
        f"model.max_seq_len = {d['model.max_seq_len']}: the longest input evaluation, scoring and generation "
        "see at once (a longer context loses its start; rolling scores use windows)"
    )
    for note in (d["paper_note"], d["mesh_note"]):
        if note:
            console.print(f"note: {note}")


def run(args: argparse.Namespace) -> int:
    cfg = resolve(args.preset, args.overrides)
    d = info(cfg)
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        print_info(d, Console())
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="layout, parameter counts and FLOPs per token of a preset")
    p.add_argument("preset", help="preset name or config .yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=run)
