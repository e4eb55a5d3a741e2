"""``glam plan PRESET --mesh DATAxMODEL``: will it fit, how much does it communicate, how long will a step take?

Argument parsing and printing only; the work is :func:`glam.plan.plan` (compile the training step ahead
of time on simulated devices, read its memory, collectives and FLOPs, estimate the step on a hardware
profile).
"""

from __future__ import annotations

import argparse
import re

from glam import jsonsafe
from glam.cli.arguments import positive_int
from glam.config import ConfigError, resolve
from glam.plan import GIB, ensure_cpu_devices, plan
from glam.plan.hardware import builtin_names, load


def parse_mesh(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ConfigError(f"--mesh {text!r}: write it as DATAxMODEL, e.g. --mesh 64x16")
    return int(m.group(1)), int(m.group(2))


def _seconds(x: float) -> str:
    if x >= 1:
        return f"{x:,.2f} s"
    return f"{x * 1e3:,.3g} ms" if x >= 1e-3 else f"{x * 1e6:,.3g} µs"


def _si(x: float, unit: str) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:,.2f} {prefix}{unit}"
    return f"{x:,.0f} {unit}"


def print_plan(p: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"{p['preset']} on a {p['mesh']} mesh ({p['devices']} devices), batch {p['batch']}x{p['seq_len']}, "
        f"remat={p['remat']}"
    )
    t.add_column("per device, per step")
    t.add_column("value", justify="right")
    t.add_row("arguments (params, optimizer state, batch)", f"{p['argument_bytes'] / GIB:,.2f} GiB")
    t.add_row("temporaries", f"{p['temp_bytes'] / GIB:,.2f} GiB")
    t.add_row("total memory", f"{p['total_bytes_per_device'] / GIB:,.2f} GiB")
    f = p["flops"]
    t.add_row(
        "FLOPs: analytic (6N + 12·L·A·S) / counted in HLO",
        f"{f['analytic_per_device']:.3e} / {f['hlo_dot_per_device']:.3e}",
    )
    c = p["comms"]
    t.add_row("communication sent, of which:", _si(c["bytes_per_device"], "B"))
    for cat, v in c["by_category"].items():
        if v["count"]:
            t.add_row(f"  {cat.replace('_', ' ')} ({v['count']}x)", _si(v["bytes"], "B"))
    e = p.get("estimate")
    if e:
        terms = " / ".join(_seconds(e[k]) for k in ("compute_seconds", "memory_seconds", "comms_seconds"))
        t.add_row(f"estimate on {e['hardware']}: compute / memory / comms", terms)
        t.add_row("estimated step (max(compute, memory) + comms)", _seconds(e["step_seconds"]))
        t.add_row("estimated tokens/s, MFU", f"{e['tokens_per_second']:,.0f}, {e['mfu']:.1%}")
    console = Console()
    console.print(t)
    if e:
        fits = "fits" if e["fits_hbm"] else "does NOT fit"
        console.print(f"  {fits} in {e['hardware']}'s HBM; the step time is a roofline estimate, not a measurement")
    console.print(f"compiled in {p['compile_seconds']:.1f} s; --json for every collective kind and sharding")


def print_serving(e: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"decode step of {e['preset']} on a {e['mesh']} mesh of {e['hardware']}, context {e['context']}, "
        f"weights {e['weight_dtype']}, KV {e['kv_dtype']}"
    )
    for col in ("model", "batch", "experts touched / layer", "busiest chip", "read / chip", "bound", "step"):
        t.add_column(col, justify="left" if col == "model" else "right")
    t.add_column("tokens/s per chip", justify="right")
    t.add_column("÷ dense twin", justify="right")
    for r in e["rows"]:
        ratio = r.get("tokens_per_second_over_twin")
        t.add_row(
            r["model"], str(r["batch"]), f"{r['experts_touched_per_moe_layer']:.2f}",
            f"{r['busiest_chip_experts_per_moe_layer']:.2f}", _si(r["bytes_read_per_chip"]["total"], "B"),
            r["bound"], _seconds(r["step_seconds"]), f"{r['tokens_per_second_per_chip']:,.1f}",
            "" if ratio is None else f"{ratio:.2f}",
        )  # fmt: skip
    console = Console()
    console.print(t)
    for name, flops in e["inference_flops_per_token"].items():
        console.print(f"  {name}: {flops / 1e9:,.1f} GFLOPs per token ({e['flops_formula']})")
    if e["paper_inference_gflops_per_token"]:
        paper = e["paper_inference_gflops_per_token"]
        console.print(f"  the paper (Table 1): GLaM {paper['glam-64b-64e']:.0f} against GPT-3 {paper['gpt-3']:.0f}")
    console.print(f"  {e['note']} (glam.plan.serving)")


def run_serving(args: argparse.Namespace, cfg, data: int, model: int, hardware) -> int:
    from glam.plan.serving import estimate

    e = estimate(
        cfg, hardware, batches=args.decode_batch, context=args.context, data=data, model=model,
        weight_dtype=args.weight_dtype, kv_dtype=args.kv_dtype,
    )  # fmt: skip
    print(jsonsafe.dumps(e, indent=2)) if args.json else print_serving(e)  # strict JSON, as the training plan
    return 0


def run(args: argparse.Namespace) -> int:
    data, model = parse_mesh(args.mesh)
    hardware = load(args.hardware)
    if args.decode_batch:
        if args.context < 1:
            raise ConfigError(f"--context {args.context}: the decode context must be at least 1 token")
        return run_serving(args, resolve(args.preset, list(args.overrides)), data, model, hardware)
    overrides = list(args.overrides)
    if args.batch is not None:
        overrides.append(f"train.batch_size={args.batch}")
    if args.seq is not None:
        overrides.append(f"train.seq_len={args.seq}")
        if not any(o.startswith("model.max_seq_len=") for o in overrides):
            overrides.append(f"model.max_seq_len={args.seq}")
    cfg = resolve(args.preset, overrides)
    ensure_cpu_devices(data * model)
    p = plan(cfg, data, model, hardware)
    if args.json:
        print(jsonsafe.dumps(p, indent=2))  # strict JSON: a non-finite number is null
    else:
        print_plan(p)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "plan", help="compile the training step for a mesh (simulated devices): memory, comms, step time"
    )
    p.add_argument("preset", help="preset name or config .yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--mesh", required=True, help="DATAxMODEL, e.g. 64x16")
    p.add_argument("--batch", type=positive_int, default=None, help="global batch, sequences (default: the preset's)")
    p.add_argument("--seq", type=positive_int, default=None, help="sequence length (default: the preset's)")
    p.add_argument(
        "--hardware",
        default="tpu-v4",
        help=f"profile for the step-time estimate: {', '.join(builtin_names())}, or a YAML file (default: tpu-v4)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON object")
    from glam.plan.serving import DTYPE_BYTES

    s = p.add_argument_group("serving estimate (glam.plan.serving; compiles nothing)")
    s.add_argument(
        "--decode-batch", type=positive_int, nargs="+", default=None, metavar="B",
        help="estimate a decode step at these batches instead of planning training (and the MoE's dense twin)",
    )  # fmt: skip
    s.add_argument("--context", type=positive_int, default=1024, help="tokens of context per row (default 1024)")
    s.add_argument("--weight-dtype", choices=list(DTYPE_BYTES), default="bfloat16", help="stored weights")
    s.add_argument("--kv-dtype", choices=list(DTYPE_BYTES), default="bfloat16", help="stored KV cache")
    p.set_defaults(func=run)
