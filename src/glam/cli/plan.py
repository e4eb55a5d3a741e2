"""``glam plan PRESET --mesh DATAxMODEL``: will it fit? Compile the full training step ahead of time.

The step (forward, backward, optimizer update, exactly what ``glam train`` runs) is lowered and
compiled for a mesh of simulated CPU devices from abstract shapes only: no weights are allocated and
nothing runs. XLA's memory analysis then gives the per-device bytes of arguments (parameters,
optimizer state, batch), outputs, and temporaries, and its cost analysis the per-device FLOPs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time

from glam.cli.arguments import non_negative_int
from glam.config import ConfigError, GLaMConfig, resolve

GIB = 1024**3


def parse_mesh(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ConfigError(f"--mesh {text!r}: write it as DATAxMODEL, e.g. --mesh 64x16")
    return int(m.group(1)), int(m.group(2))


def ensure_cpu_devices(n: int) -> None:
    """Ask for ``n`` simulated CPU devices; only possible before JAX starts its backend."""
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", max(n, jax.config.jax_num_cpu_devices or 1))
    except RuntimeError:
        pass  # backend already started: abstract_mesh() reports a clear error if too few devices
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def plan(cfg: GLaMConfig, data: int, model: int) -> dict:
    """Per-device memory and FLOPs of the compiled training step on a data × model mesh."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    from glam.model.flops import model_size
    from glam.sharding.mesh import abstract_mesh, validate_mesh
    from glam.train.state import abstract_state
    from glam.train.step import BATCH_KEYS, batch_sharding, make_train_step

    cfg = dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, data=data, model=model))
    validate_mesh(cfg, data, model)
    mesh = abstract_mesh(data, model, cfg)
    t0 = time.perf_counter()
    state = abstract_state(cfg, mesh)
    B, S = cfg.train.batch_size, cfg.train.seq_len
    dtypes = {"loss_weights": jnp.float32}
    bsh = batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct((B, S), dtypes.get(k, jnp.int32), sharding=bsh) for k in BATCH_KEYS}
    compiled = make_train_step(cfg, mesh).lower(state, batch).compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    args, out = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
    temp, alias = int(mem.temp_size_in_bytes), int(mem.alias_size_in_bytes)
    code = int(getattr(mem, "generated_code_size_in_bytes", 0))
    total = args + out - alias + temp + code  # donated state: outputs alias the arguments
    w_in = state.params["blocks"]["moe_layer"]["ffn"].get("w_in") if cfg.is_moe else None
    shardings = {
        "embedding [V, M]": str(state.params["embed"]["embedding"].sharding.spec),
        "attention wq [P, M, N, K]": str(state.params["blocks"]["dense_layer"]["attn"]["wq"].sharding.spec),
        "dense ffn w_in [P, M, F]": str(state.params["blocks"]["dense_layer"]["ffn"]["w_in"].sharding.spec),
        "batch [B, S]": str(batch_sharding(mesh).spec),
    }
    if w_in is not None:
        shardings["expert w_in [P, E, M, F]"] = str(w_in.sharding.spec)
    return {
        "preset": cfg.name,
        "mesh": f"{data}x{model}",
        "devices": data * model,
        "batch": B,
        "seq_len": S,
        "remat": cfg.model.remat,
        "argument_bytes": args,
        "output_bytes": out,
        "alias_bytes": alias,
        "temp_bytes": temp,
        "code_bytes": code,
        "total_bytes_per_device": total,
        "total_gib_per_device": total / GIB,
        # Analytic (glam.model.flops): XLA's cost analysis counts a scanned loop body only once.
        "flops_per_device": model_size(cfg).flops_per_token_train * B * S / (data * model),
        "shardings": shardings,
        "compile_seconds": seconds,
    }


def print_plan(p: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"{p['preset']} on a {p['mesh']} mesh ({p['devices']} devices), batch {p['batch']}x{p['seq_len']}, "
        f"remat={p['remat']}"
    )
    t.add_column("per device")
    t.add_column("GiB", justify="right")
    for key, label in (
        ("argument_bytes", "arguments (params, optimizer state, batch)"),
        ("output_bytes", "outputs"),
        ("alias_bytes", "  of which donated (aliased)"),
        ("temp_bytes", "temporaries"),
        ("total_bytes_per_device", "total"),
    ):
        t.add_row(label, f"{p[key] / GIB:,.2f}")
    t.add_row("training FLOPs per step (6N + 12·L·A·S per token)", f"{p['flops_per_device']:.3e}")
    console = Console()
    console.print(t)
    for name, spec in p["shardings"].items():
        console.print(f"  {name}: {spec}")
    for cap in (16, 32, 80):
        verdict = "fits" if p["total_gib_per_device"] <= cap else "does not fit"
        console.print(f"  {verdict} in {cap} GiB per chip")
    console.print(f"compiled in {p['compile_seconds']:.1f} s")


def run(args: argparse.Namespace) -> int:
    data, model = parse_mesh(args.mesh)
    overrides = list(args.overrides)
    if args.batch:
        overrides.append(f"train.batch_size={args.batch}")
    if args.seq:
        overrides.append(f"train.seq_len={args.seq}")
        if not any(o.startswith("model.max_seq_len=") for o in overrides):
            overrides.append(f"model.max_seq_len={args.seq}")
    cfg = resolve(args.preset, overrides)
    ensure_cpu_devices(data * model)
    p = plan(cfg, data, model)
    if args.json:
        print(json.dumps(p, indent=2))
    else:
        print_plan(p)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="compile the training step for a mesh (simulated devices) and report memory")
    p.add_argument("preset", help="preset name or config .yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--mesh", required=True, help="DATAxMODEL, e.g. 64x16")
    p.add_argument("--batch", type=non_negative_int, default=0, help="global batch, sequences (default: the preset's)")
    p.add_argument("--seq", type=non_negative_int, default=0, help="sequence length (default: the preset's)")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=run)
