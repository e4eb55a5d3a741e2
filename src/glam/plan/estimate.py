"""A roofline estimate of the training step time on named hardware. An estimate, not a measurement.

    compute  = counted dot FLOPs per device / peak bf16 FLOP/s
    memory   = counted HBM traffic per device / HBM bandwidth
    comms    = Σ over collectives of bytes sent / the bandwidth the topology gives that group
    step     = max(compute, memory) + comms

Why this form: within a kernel compute and memory traffic overlap (the roofline takes the larger),
while the collectives of this program mostly sit on the critical path (the MoE all-to-all separates
the router from the experts; the tensor-parallel reductions follow their matmuls), so they are added.
``step_overlapped`` = max(compute, memory, comms) is the bound if XLA hid every collective.

What it ignores: kernel efficiency (real matmuls reach 50–80% of peak, small ones much less), the
latency of each collective (thousands per step at 64B/64E: a few µs each), overlap that XLA's
scheduler does find, stragglers, host input, and that the program was compiled for CPU (fusion and
layout choices, hence the traffic term, differ on a TPU or GPU). FLOPs are the counted ones, so
rematerialisation is included; MFU uses the analytic model FLOPs (6N + 12·L·A·S per token), as
PaLM defines it.
"""

from __future__ import annotations

from glam.plan.hardware import Hardware


def comm_seconds(bytes_by_group: dict[int, float], hw: Hardware) -> float:
    return sum(b / hw.collective_bandwidth(n) for n, b in bytes_by_group.items())


def estimate(
    hw: Hardware,
    *,
    flops_per_device: float,
    hbm_bytes_per_device: float,
    bytes_by_group: dict[int, float],
    model_flops_per_step: float,
    tokens_per_step: int,
    devices: int,
) -> dict:
    compute = flops_per_device / hw.peak_flops
    memory = hbm_bytes_per_device / hw.hbm_bandwidth
    comms = comm_seconds(bytes_by_group, hw)
    step = max(compute, memory) + comms
    overlapped = max(compute, memory, comms)
    return {
        "hardware": hw.name,
        "compute_seconds": compute,
        "memory_seconds": memory,
        "comms_seconds": comms,
        "step_seconds": step,
        "step_seconds_overlapped": overlapped,
        "formula": "step = max(compute, memory) + comms; overlapped = max(compute, memory, comms)",
        "tokens_per_second": tokens_per_step / step,
        "mfu": model_flops_per_step / (step * devices * hw.peak_flops),
        "mfu_overlapped": model_flops_per_step / (overlapped * devices * hw.peak_flops),
        "fits_hbm": None,
        "note": "roofline estimate: ignores kernel efficiency, collective latency, overlap, and CPU-compiled fusion",
    }
