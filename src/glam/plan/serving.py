"""A serving estimate: decode step time and tokens/s per chip at a batch, from bytes read and FLOPs.

One decode step of B rows (one new token each), each row attending to a context of S tokens, on a
data × model mesh of D chips laid out as glam's rule table lays out training (experts on ``data``,
their hidden F on ``model``; dense weights 2-D over ``data`` × ``model``), weight-stationary: each chip
multiplies its own weight shard and the activations move (Pope et al. 2022, "Efficiently Scaling
Transformer Inference", §3.2), so a chip reads only what it holds:

    experts touched per MoE layer   T(B) = E · (1 − (1 − k/E)^B)     (B·k uniform top-k draws)
    bytes per chip   = dense weights / D                 (everything but the routed experts; the tied
                                                          embedding once, as the output projection)
                     + L_moe · T_chip · one expert / model
                     + KV cache: 2 · L · B · S · N·K · kv bytes / D
    FLOPs per chip   = B · (2·N_activated + 4·L·A·S) / D  (glam.model.flops, inference per token)
    step             = max(FLOPs / peak, bytes / HBM bandwidth);   tokens/s per chip = B / step / D

``T_chip`` is the busiest chip's expected count of touched local experts: all chips wait for the
slowest at every step (the all-to-all joins them). With g = E/data experts per chip, each touched
with p = 1 − (1 − k/E)^B, it is E[max of `data` Binomial(g, p)] = Σ_j 1 − P(X < j)^data, treating
experts as touched independently (exact on one chip, where it is T(B); it slightly underestimates at
batch 1–2 on many chips, where some chip is always touched). With more data shards than experts,
each expert spans data/E chips and a chip holds that fraction of one expert.

What it ignores: routing skew (a trained router is not uniform, so fewer experts may be touched),
communication (the activations' all-gathers and reduce-scatters, the all-to-all) and its latency,
which at decode batch sizes on a large mesh can dominate, kernel efficiency and the step's
non-matmul work. An estimate, not a measurement.
"""

from __future__ import annotations

import dataclasses
import math

from glam.config import GLaMConfig
from glam.plan.hardware import Hardware

# bytes per stored element; the one table the CLI's choices come from
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "int8": 1}

# GLaM paper Table 1: inference GFLOPs per token, GLaM 64B/64E against GPT-3 175B
PAPER_INFERENCE_GFLOPS = {"glam-64b-64e": 180.0, "gpt-3": 350.0}


def expected_touched(experts: int, top_k: int, draws: int) -> float:
    """E · (1 − (1 − k/E)^B): expected distinct experts touched by B tokens' uniform top-k choices."""
    if not experts:
        return 0.0
    return experts * (1.0 - (1.0 - top_k / experts) ** draws)


def expected_max_binomial(n: int, p: float, copies: int) -> float:
    """E[max of ``copies`` independent Binomial(n, p)] = Σ_{j=1..n} 1 − P(X ≤ j−1)^copies."""
    cdf, total, pmf = 0.0, 0.0, (1.0 - p) ** n
    for j in range(1, n + 1):
        cdf += pmf  # P(X ≤ j-1)
        total += 1.0 - min(cdf, 1.0) ** copies
        pmf = math.comb(n, j) * p**j * (1.0 - p) ** (n - j)
    return total


def busiest_chip_experts(experts: int, top_k: int, batch: int, data: int) -> float:
    """Expected experts (in whole-expert units) the busiest chip reads per MoE layer (module docstring)."""
    if not experts:
        return 0.0
    p = 1.0 - (1.0 - top_k / experts) ** batch
    if data >= experts:  # each expert spans data/E chips: a chip holds an E/data slice of one
        return expected_max_binomial(1, p, experts) * experts / data
    return expected_max_binomial(experts // data, p, data)


@dataclasses.dataclass(frozen=True)
class Counts:
    """What a decode step reads and computes, from the model's real parameter shapes."""

    name: str
    dense_params: int  # everything but the routed experts
    expert_params: int  # one expert of one MoE layer
    moe_layers: int
    experts: int
    top_k: int
    activated_params: int
    layers: int
    attention_dim: int  # A = heads · head_dim (K and V per token per layer)


def counts(cfg: GLaMConfig) -> Counts:
    from glam.model.flops import model_size

    size = model_size(cfg)
    E, L = cfg.moe.num_experts, cfg.model.num_layers
    moe_layers = cfg.num_moe_layers  # every other layer (0, 2, 4, …), or every layer with moe.layers=all
    return Counts(
        name=cfg.name,
        dense_params=size.params_total - size.params_experts,
        expert_params=size.params_experts // (moe_layers * E) if E else 0,
        moe_layers=moe_layers,
        experts=E,
        top_k=cfg.moe.causal_top_k if E else 0,
        activated_params=size.params_activated,
        layers=L,
        attention_dim=cfg.model.num_heads * cfg.model.head_dim,
    )


def dense_twin(cfg: GLaMConfig) -> GLaMConfig:
    """The dense model with the MoE model's activated parameters per token (as ``tiny-dense`` is to ``tiny``).

    A (MoE, dense) pair activates one gated FFN (3·M·F) and k experts (c·M·F_e, c = 3 gated, 2 not);
    a dense pair has two gated FFNs, 2·3·M·F', so F' = (3·F + k·c·F_e) / 6, rounded (7F/6 for GLaM).
    With ``moe.layers=all`` the pair has two MoE layers: F' = 2·k·c·F_e / 6.
    """
    m, moe = cfg.model, cfg.moe
    if not moe.num_experts:
        return cfg
    c = 3 if m.expert_activation == "geglu" else 2
    routed = moe.causal_top_k * c * (moe.expert_dim or m.ffn_dim)  # one MoE layer's activated experts / M
    width = (2 * routed if moe.layers == "all" else 3 * m.ffn_dim + routed) / 6
    return dataclasses.replace(
        cfg,
        name=f"{cfg.name} dense twin",
        model=dataclasses.replace(m, ffn_dim=round(width)),
        moe=dataclasses.replace(moe, num_experts=0, shared_experts=0, layers="alternate"),
    )


def decode_step(
    c: Counts,
    hw: Hardware,
    *,
    batch: int,
    context: int,
    data: int = 1,
    model: int = 1,
    weight_bytes: int = 2,
    kv_bytes: int = 2,
) -> dict:
    """The estimate for one decode step of ``batch`` rows at ``context`` tokens (module docstring)."""
    D = data * model
    touched = expected_touched(c.experts, c.top_k, batch)
    busiest = busiest_chip_experts(c.experts, c.top_k, batch, data)
    kv_elements = 2 * c.layers * batch * context * c.attention_dim
    read = {
        "dense_weights": c.dense_params * weight_bytes / D,
        "experts": c.moe_layers * busiest * c.expert_params * weight_bytes / model,
        "kv_cache": kv_elements * kv_bytes / D,
    }
    read_total = sum(read.values())
    flops = batch * (2.0 * c.activated_params + 4.0 * c.layers * c.attention_dim * context) / D
    compute, memory = flops / hw.peak_flops, read_total / hw.hbm_bandwidth
    step = max(compute, memory)
    held = (c.dense_params + c.moe_layers * c.experts * c.expert_params) * weight_bytes / D + kv_elements * kv_bytes / D
    return {
        "model": c.name,
        "hardware": hw.name,
        "mesh": f"{data}x{model}",
        "batch": batch,
        "context": context,
        "experts_touched_per_moe_layer": touched,
        "busiest_chip_experts_per_moe_layer": busiest,
        "bytes_read_per_chip": {**read, "total": read_total},
        "flops_per_chip": flops,
        "compute_seconds": compute,
        "memory_seconds": memory,
        "step_seconds": step,
        "bound": "compute" if compute >= memory else "memory",
        "tokens_per_second_per_chip": batch / step / D,
        "tokens_per_second": batch / step,
        "bytes_held_per_chip": held,
        "fits_hbm": held <= hw.hbm_bytes,
    }


def estimate(
    cfg: GLaMConfig,
    hw: Hardware,
    *,
    batches: list[int],
    context: int,
    data: int = 1,
    model: int = 1,
    weight_dtype: str = "bfloat16",
    kv_dtype: str = "bfloat16",
) -> dict:
    """Decode-step estimates at each batch, for the model and (when it is MoE) its dense twin."""
    models = [cfg, dense_twin(cfg)] if cfg.moe.num_experts else [cfg]
    kwargs = dict(context=context, data=data, model=model)
    kwargs |= dict(weight_bytes=DTYPE_BYTES[weight_dtype], kv_bytes=DTYPE_BYTES[kv_dtype])
    rows, flops_per_token = [], {}
    for m in models:
        c = counts(m)
        flops_per_token[c.name] = 2.0 * c.activated_params + 4.0 * c.layers * c.attention_dim * context
        rows += [decode_step(c, hw, batch=b, **kwargs) for b in batches]
    if len(models) == 2:
        for row, twin in zip(rows[: len(batches)], rows[len(batches) :]):
            row["tokens_per_second_over_twin"] = row["tokens_per_second"] / twin["tokens_per_second"]
    return {
        "preset": cfg.name,
        "hardware": hw.name,
        "mesh": f"{data}x{model}",
        "weight_dtype": weight_dtype,
        "kv_dtype": kv_dtype,
        "context": context,
        "inference_flops_per_token": flops_per_token,
        "flops_formula": "2·N_activated + 4·L·A·S (glam.model.flops); the paper: 2·N",
        "paper_inference_gflops_per_token": PAPER_INFERENCE_GFLOPS if cfg.name == "glam-64b-64e" else None,
        "rows": rows,
        "note": "roofline from bytes read and FLOPs, uniform routing, weight-stationary; ignores comms and latency",
    }
