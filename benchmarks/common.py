"""Shared helpers of the benchmark scripts: interleaved timing, a measured matmul peak, JSON output.

The machine these ran on is shared with other jobs, so absolute times are noisy. Every script
therefore times the variants it compares in the same run, interleaved round by round, and reports
medians and ratios of medians.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall seconds of each zero-argument function; one warm-up call each (compilation),
    then ``repeats`` rounds that call every function once in turn, so load changes hit all alike."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def matmul_thunk(n: int = 2048, dtype=jnp.float32) -> tuple[Callable[[], object], float]:
    """(a zero-argument n×n×n matmul, its FLOPs): time it interleaved with what MFU is quoted for."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(jnp.dot)
    calls = 4  # back to back, so thread pools and caches are warm as in a training step's matmuls

    def run():
        for _ in range(calls):
            out = f(a, b)
        return out

    return run, calls * 2.0 * n**3


def matmul_peak(n: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
    """FLOP/s of one n×n×n matmul on the default device: the peak that MFU is quoted against."""
    fn, flops = matmul_thunk(n, dtype)
    return flops / interleaved({"matmul": fn}, repeats)["matmul"]


def machine() -> dict:
    device = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device": device.device_kind,
        "devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
    }


def add_layer_shape_args(p, experts: list[int], group: bool = True) -> None:
    """The MoE layer benchmarks' shape flags; the defaults are §1's shapes (8,192 tokens, M 256, F 1,024)."""
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--ffn", type=int, default=1024)
    if group:
        p.add_argument("--group", type=int, default=1024, help="routing group size S_g")
    p.add_argument("--experts", type=int, nargs="+", default=experts)


def write_json(path: str | None, result: dict) -> None:
    result = {"machine": machine(), **result}
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
