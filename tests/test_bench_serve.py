"""benchmarks/serve_load.py's metric math (vLLM's definitions) and workload draws, on values worked by hand."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "serve_load", Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"
)
serve_load = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serve_load)

# A: chunks 0.5, 0.6, 0.8 s after its send, 3 tokens, stream ended at 0.8 s
A = {"ok": True, "chunks": [0.5, 0.6, 0.8], "latency": 0.8, "output_tokens": 3, "max_tokens": 3, "prompt_tokens": 10}
# B: one token at 0.3 s (no TPOT, no ITL)
B = {"ok": True, "chunks": [0.3], "latency": 0.3, "output_tokens": 1, "max_tokens": 4, "prompt_tokens": 20}
# C: refused
C = {"ok": False, "chunks": [], "output_tokens": 0, "max_tokens": 5, "prompt_tokens": 7, "error": "HTTP 429: busy"}


def test_request_metrics_follow_vllm_definitions():
    m = serve_load.request_metrics(A)
    assert m["ttft"] == 0.5 and m["e2el"] == 0.8
    assert m["tpot"] == pytest.approx(0.15)  # (0.8 − 0.5) / (3 − 1)
    assert m["itl"] == pytest.approx([0.1, 0.2])
    m = serve_load.request_metrics(B)
    assert m["tpot"] is None and m["itl"] == []


def test_distribution_is_numpy_linear_percentiles_in_ms():
    d = serve_load.distribution([0.001, 0.002, 0.003, 0.004])
    assert d["mean_ms"] == pytest.approx(2.5)
    assert d["p50_ms"] == pytest.approx(2.5)  # halfway between 2 and 3
    assert d["p90_ms"] == pytest.approx(3.7)  # 0.9·3 = 2.7 of the way: 3 + 0.7
    assert d["p99_ms"] == pytest.approx(3.97)
    assert serve_load.distribution([])["p99_ms"] is None


def test_summarise_throughput_goodput_and_failures():
    s = serve_load.summarise([A, B, C], duration=2.0, slo_ms={"ttft": 400, "tpot": 200})
    assert s["completed"] == 2 and s["failed"] == 1 and s["errors"] == ["HTTP 429: busy"]
    assert s["request_throughput"] == pytest.approx(1.0)  # 2 answered in 2 s
    assert s["output_throughput"] == pytest.approx(2.0)  # 4 tokens in 2 s
    assert s["total_token_throughput"] == pytest.approx(17.0)  # (10 + 20 + 4) / 2; the refused one is not counted
    assert s["short_outputs"] == 1  # B stopped at 1 of its 4
    # TTFT: A 500 ms > 400 fails; B 300 ms meets it and has no TPOT to meet → 1 good request in 2 s
    assert s["goodput"] == pytest.approx(0.5)
    assert serve_load.summarise([A, B], 2.0, {"ttft": 600, "tpot": 100})["goodput"] == pytest.approx(0.5)  # A's TPOT
    assert serve_load.summarise([A, B], 2.0, {"ttft": 600, "tpot": 160})["goodput"] == pytest.approx(1.0)
    assert s["ttft"]["p50_ms"] == pytest.approx(400.0) and s["itl"]["p50_ms"] == pytest.approx(150.0)
    assert s["tpot"]["p99_ms"] == pytest.approx(150.0)  # only A has a TPOT


def test_poisson_arrivals_and_log_uniform_lengths():
    assert serve_load.arrivals(math.inf, 3, 0) == [0.0, 0.0, 0.0]
    t = serve_load.arrivals(4.0, 2000, 1)
    assert t[0] == 0.0 and all(b >= a for a, b in zip(t, t[1:]))
    gaps = np.diff(t)
    assert gaps.mean() == pytest.approx(0.25, rel=0.08)  # mean gap 1/rate
    assert gaps.std() == pytest.approx(0.25, rel=0.1)  # exponential: std = mean
    assert t == serve_load.arrivals(4.0, 2000, 1)  # seeded
    n = serve_load.log_uniform(np.random.default_rng(0), 16, 512, 4000)
    assert min(n) >= 16 and max(n) <= 512
    # log-uniform: the median is the geometric mean √(16·512) = 90.5, and a quarter falls below 16·32^¼ = 38
    assert np.median(n) == pytest.approx(90.5, rel=0.06)
    assert np.mean(np.array(n) < 38) == pytest.approx(0.25, abs=0.03)


def test_comparisons_pair_continuous_with_static_and_models():
    def row(name, tput, p99):
        return {"row": name, "rates": [{"rate": 4.0, "output_throughput": tput, "ttft": {"p99_ms": p99}}]}

    rows = [row("glam:tiny:continuous", 300, 100), row("glam:tiny:static", 100, 400),
            row("glam:tiny-dense:continuous", 250, 90), row("hf:/tmp/m", 60, 900)]  # fmt: skip
    got = {(c["a"], c["b"]): c for c in serve_load.comparisons(rows)}
    assert got["glam:tiny:continuous", "glam:tiny:static"]["output_throughput_ratio"] == pytest.approx(3.0)
    assert got["glam:tiny:continuous", "glam:tiny:static"]["p99_ttft_ratio"] == pytest.approx(0.25)
    assert got["glam:tiny:continuous", "glam:tiny-dense:continuous"]["output_throughput_ratio"] == pytest.approx(1.2)
    assert got["glam:tiny:continuous", "hf:/tmp/m"]["output_throughput_ratio"] == pytest.approx(5.0)
    assert len(got) == 3


def test_a_stream_without_text_counts_as_completed_without_a_ttft():
    d = {"ok": True, "chunks": [], "latency": 0.4, "output_tokens": 2, "max_tokens": 2, "prompt_tokens": 5}
    s = serve_load.summarise([A, d], duration=1.0, slo_ms={"ttft": 1000})
    assert s["completed"] == 2 and s["no_text_chunks"] == 1 and s["output_throughput"] == pytest.approx(5.0)
    assert s["ttft"]["p50_ms"] == pytest.approx(500.0) and s["goodput"] == pytest.approx(1.0)  # A only


def test_decode_quant_int8_per_channel_by_hand():
    """benchmarks/decode_quant.py: symmetric int8 with one scale per channel over the d_model axis."""
    import sys

    import jax.numpy as jnp

    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, bench)  # decode_quant imports its siblings common and decode
    try:
        spec = importlib.util.spec_from_file_location("decode_quant", f"{bench}/decode_quant.py")
        dq = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(dq)
    finally:
        sys.path.remove(bench)
    w = jnp.array([[1.0, -2.0], [0.5, 4.0]])  # [M, F]: scales over M, per column: 1/127 and 4/127
    params = {"w": w, "norm": jnp.ones((2,)), "router": w}
    axes = {"w": ("embed", "mlp"), "norm": ("norm",), "router": ("router_embed", "router_expert")}
    q = dq.quantize(params, axes, "int8")
    assert q["w"].q.tolist() == [[127, -64], [64, 127]]  # -63.5 and 63.5 round to even
    assert q["w"].scale.shape == (1, 2) and q["w"].scale[0].tolist() == pytest.approx([1 / 127, 4 / 127])
    assert q["router"] is params["router"] and q["norm"] is params["norm"]  # router and norms stay float32
    back = dq.dequantize(q)["w"]
    assert np.asarray(back).ravel().tolist() == pytest.approx([1.0, -64 * 4 / 127, 64 / 127, 4.0])
    assert dq.quantize(params, axes, "bfloat16")["w"].dtype == jnp.bfloat16
