"""Plan a training run before renting it: memory, communication, FLOPs and a step-time estimate.

``plan(cfg, data, model, hardware)`` compiles the training step ahead of time for a data × model mesh
of simulated devices (``glam.plan.program``), then reads the compiled program:

- ``memory``: XLA's per-device memory analysis;
- ``comms``: every collective of the post-optimisation HLO with loop trip counts applied
  (``glam.plan.hlo``, ``glam.plan.comms``): counts and bytes each device sends, by kind and by part of
  the model;
- ``flops``: matrix FLOPs per device counted from the HLO, beside XLA's cost analysis (which counts
  a loop body once) and glam's analytic count (``glam.model.flops``);
- ``estimate``: a roofline step time, tokens/s and MFU on a hardware profile (``glam.plan.estimate``).

Serving is estimated apart, without compiling anything: ``glam.plan.serving`` (``glam plan --decode-batch``)
gives a decode step's time and tokens/s per chip from the bytes it reads and its FLOPs.
"""

from __future__ import annotations

from glam.config import GLaMConfig
from glam.plan import comms as comms_mod
from glam.plan import cost, hlo
from glam.plan.estimate import estimate
from glam.plan.hardware import Hardware
from glam.plan.program import (
    GIB,
    compile_train_step,
    ensure_cpu_devices,
    memory_report,
    parameter_layouts,
    parameter_shardings,
)

__all__ = ["GIB", "ensure_cpu_devices", "plan", "read_program"]


def moe_shapes_for(cfg: GLaMConfig, devices: int) -> comms_mod.MoEShapes | None:
    """The training step's MoE buffer share, capacity and group size (per micro-batch)."""
    if not cfg.is_moe:
        return None
    from glam.model.moe.gating import capacity

    tokens = cfg.train.batch_size // cfg.train.grad_accum * cfg.train.seq_len
    group = cfg.moe.group_size or cfg.train.seq_len
    E = cfg.moe.num_experts
    C = capacity(group, E, cfg.moe.capacity_factor_train, cfg.moe.capacity_multiple)
    return comms_mod.moe_shapes(E, tokens // group, group, C, cfg.model.d_model, devices)


def read_program(hlo_text: str, devices: int, layouts=(), moe=None) -> tuple[dict, dict]:
    """(comms, counted cost) of one compiled program's HLO text."""
    module = hlo.parse_module(hlo_text)
    weights = comms_mod.parameter_shapes(list(layouts))
    comms = comms_mod.count_collectives(module, devices, weights, moe)
    counted = cost.count_cost(module)
    once = cost.count_cost(module, apply_trip_counts=False)
    counted["dot_flops_loop_bodies_once"] = once["dot_flops"]
    counted["hbm_bytes_loop_bodies_once"] = once["hbm_bytes"]
    return comms, counted


def xla_cost(compiled, key: str) -> float | None:
    """One figure of XLA's own cost analysis ("flops", "bytes accessed"), which visits a loop body once."""
    ca = compiled.cost_analysis()
    if isinstance(ca, list | tuple):
        ca = ca[0] if ca else {}
    return float(ca[key]) if ca and key in ca else None


def plan(cfg: GLaMConfig, data: int, model: int, hardware: Hardware | None = None) -> dict:
    """Memory, shardings, communication, FLOPs and (with ``hardware``) a step-time estimate per device."""
    from glam.model.flops import model_size
    from glam.train.step import batch_sharding

    step = compile_train_step(cfg, data, model)
    cfg, devices = step.cfg, data * model
    B, S = cfg.train.batch_size, cfg.train.seq_len
    comms, counted = read_program(
        step.compiled.as_text(), devices, parameter_layouts(step.state, step.mesh), moe_shapes_for(cfg, devices)
    )
    model_flops = model_size(cfg).flops_per_token_train * B * S
    flops = {
        "analytic_per_device": model_flops / devices,
        "analytic_formula": "(6N + 12·L·A·S) per token × tokens / devices, no recomputation (glam.model.flops)",
        "hlo_dot_per_device": counted["dot_flops"],
        "hlo_dot_loop_bodies_once": counted["dot_flops_loop_bodies_once"],
        "xla_cost_analysis": xla_cost(step.compiled, "flops"),
        "xla_note": "XLA's cost analysis visits a while body once (all FLOPs, not only dots)",
        "hlo_over_analytic": counted["dot_flops"] * devices / model_flops,
        "hbm_bytes_per_device": counted["hbm_bytes"],
        "hbm_bytes_loop_bodies_once": counted["hbm_bytes_loop_bodies_once"],
        "xla_bytes_accessed": xla_cost(step.compiled, "bytes accessed"),
    }
    out = {
        "preset": cfg.name,
        "mesh": f"{data}x{model}",
        "devices": devices,
        "batch": B,
        "seq_len": S,
        "remat": cfg.model.remat,
        **memory_report(step.compiled),
        # kept for scripts reading the old key: the analytic training FLOPs per device
        "flops_per_device": model_flops / devices,
        "shardings": {**parameter_shardings(step.state), "batch [B, S]": str(batch_sharding(step.mesh).spec)},
        "compile_seconds": step.seconds,
        "comms": comms,
        "flops": flops,
    }
    if hardware is not None:
        est = estimate(
            hardware,
            flops_per_device=counted["dot_flops"],
            hbm_bytes_per_device=counted["hbm_bytes"],
            bytes_by_group=comms["bytes_by_group_size"],
            model_flops_per_step=model_flops,
            tokens_per_step=B * S,
            devices=devices,
        )
        est["fits_hbm"] = out["total_bytes_per_device"] <= hardware.hbm_bytes
        if cfg.model.activation_dtype != "float32":
            # XLA's CPU backend upcasts bf16 arithmetic, so the collectives it compiles are f32 (checked on
            # tiny: no bf16 collective); on a TPU or GPU the activation collectives would be about half
            est["caveat"] = "activations are bf16 but the CPU-compiled collectives are f32: comms is an upper bound"
        out["estimate"] = est
    return out
