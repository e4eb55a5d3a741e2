"""A glam model's weights and config in the Hugging Face layout of ``hf/modeling_glam.py``.

``check_exportable(cfg)`` refuses, in one line, a variant the PyTorch model does not compute;
``hf_config(cfg)`` is its ``config.json``; ``hf_weights(cfg, params, dtype)`` its ``model.safetensors``
tensors, from glam's parameter tree (leading pair axis P on every block leaf):

=============================================  ==================================================
glam (pair p: 2p MoE, 2p+1 dense (1))           Hugging Face (layer i)
=============================================  ==================================================
embed.embedding [V, M]                          model.embed_tokens.weight (lm_head tied to it)
attn.wq, wk, wv [M, N, K]                       self_attn.{q,k,v}_proj.weight [N·K, M]
attn.wo [N, K, M]                               self_attn.o_proj.weight [M, N·K]
attn.rel_bias [N, buckets]                      self_attn.relative_attention_bias.weight [buckets, N]
attn_norm.scale, ffn_norm.scale [M]             input_layernorm.weight, post_attention_layernorm.weight
ffn.w_gate, w_in [M, F], w_out [F, M] (dense)   mlp.gate_proj, up_proj [F, M], mlp.down_proj [M, F]
ffn.w_router [M, E]                             mlp.router.weight [E, M]
ffn.router_bias [E]                             mlp.router_bias
ffn.w_in, w_gate [E, M, F], w_out [E, F, M]     mlp.experts.w_in, w_gate, w_out (as they are)
ffn.w_shared_{gate,in,out}                      mlp.shared_experts.{gate,up,down}_proj.weight
final_norm.scale                                model.norm.weight
=============================================  ==================================================

(1) or MoE too with ``moe.layers=all`` (``moe_every_layer`` in ``config.json``).

The arrays are read on the host (``jax.device_get`` of whole arrays), so where the checkpoint was
trained — one device or a mesh — makes no difference to what is written.
"""

from __future__ import annotations

import jax
import ml_dtypes
import numpy as np

from glam.config import GLaMConfig
from glam.export.tokenizer import ExportError

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
EXPORTABLE_ROUTERS = ("token_choice", "expert_choice")
EXPORTABLE_BALANCE = ("aux_loss", "bias")
FP32_NAMES = ("router", "relative_attention_bias")  # kept fp32 in a bf16 export (the model computes them in fp32)


def check_exportable(cfg: GLaMConfig) -> None:
    """Raise ``ExportError`` (one line) for a variant ``modeling_glam.py`` does not compute."""
    moe = cfg.moe
    if not cfg.is_moe:
        return
    if moe.router not in EXPORTABLE_ROUTERS:
        raise ExportError(
            f"moe.router={moe.router!r} cannot be exported yet: the Hugging Face model routes with "
            f"{' or '.join(EXPORTABLE_ROUTERS)} only"
        )
    if moe.router == "expert_choice" and moe.expert_choice_eval == "group":
        raise ExportError(
            "moe.expert_choice_eval='group' routes each token by the scores of later tokens, which a causal "
            "model cannot do; export with the causal rule glam decodes with (moe.expert_choice_eval=causal)"
        )
    if moe.balance not in EXPORTABLE_BALANCE:
        raise ExportError(f"moe.balance={moe.balance!r} cannot be exported yet (supported: {EXPORTABLE_BALANCE})")


def hf_config(cfg: GLaMConfig) -> dict:
    """The ``GlamConfig`` fields of ``cfg`` (configuration_glam.py names them)."""
    check_exportable(cfg)
    m, moe = cfg.model, cfg.moe
    return {
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_heads,
        "head_dim": m.head_dim,
        "intermediate_size": m.ffn_dim,
        "relative_attention_num_buckets": m.rel_buckets,
        "relative_attention_max_distance": m.rel_max_distance,
        "extra_zero_logit": m.extra_zero_logit,
        "rms_norm_eps": m.norm_eps,
        "max_position_embeddings": m.max_seq_len,
        "num_local_experts": moe.num_experts,
        "num_experts_per_tok": moe.causal_top_k if cfg.is_moe else 0,
        "renormalize_gates": moe.router == "token_choice",
        "router_bias": cfg.is_moe and moe.balance == "bias",
        "expert_activation": m.expert_activation,
        "expert_intermediate_size": moe.expert_dim or m.ffn_dim,
        "num_shared_experts": moe.shared_experts,
        "router_aux_loss_coef": moe.aux_loss_weight,
        "moe_every_layer": cfg.moe_per_pair == 2,
    }


def _dense(prefix: str, ffn: dict, out: dict) -> None:
    """A gated FFN's [M, F] / [F, M] weights as nn.Linear weights ([out, in])."""
    if "w_gate" in ffn:
        out[f"{prefix}.gate_proj.weight"] = ffn["w_gate"].T
    out[f"{prefix}.up_proj.weight"] = ffn["w_in"].T
    out[f"{prefix}.down_proj.weight"] = ffn["w_out"].T


def _layer(prefix: str, layer: dict, moe: bool, out: dict) -> None:
    attn = layer["attn"]
    M, N, K = attn["wq"].shape
    for name in ("q", "k", "v"):
        out[f"{prefix}.self_attn.{name}_proj.weight"] = attn[f"w{name}"].reshape(M, N * K).T
    out[f"{prefix}.self_attn.o_proj.weight"] = attn["wo"].reshape(N * K, M).T
    out[f"{prefix}.self_attn.relative_attention_bias.weight"] = attn["rel_bias"].T
    out[f"{prefix}.input_layernorm.weight"] = layer["attn_norm"]["scale"]
    out[f"{prefix}.post_attention_layernorm.weight"] = layer["ffn_norm"]["scale"]
    ffn = layer["ffn"]
    if not moe:
        _dense(f"{prefix}.mlp", ffn, out)
        return
    out[f"{prefix}.mlp.router.weight"] = ffn["w_router"].T
    if "router_bias" in ffn:
        out[f"{prefix}.mlp.router_bias"] = ffn["router_bias"]
    for name in ("w_in", "w_gate", "w_out"):
        if name in ffn:
            out[f"{prefix}.mlp.experts.{name}"] = ffn[name]
    if "w_shared_in" in ffn:
        shared = {k.replace("w_shared_", "w_"): v for k, v in ffn.items() if k.startswith("w_shared_")}
        _dense(f"{prefix}.mlp.shared_experts", shared, out)


def hf_weights(cfg: GLaMConfig, params: dict, dtype: str = "float32") -> dict[str, np.ndarray]:
    """``model.safetensors``'s tensors (contiguous numpy arrays) from glam's parameters."""
    check_exportable(cfg)
    host = jax.tree.map(lambda a: np.asarray(jax.device_get(a), dtype=np.float32), params)
    out: dict[str, np.ndarray] = {"model.embed_tokens.weight": host["embed"]["embedding"]}
    for p in range(cfg.num_pairs):
        for j, kind in enumerate(("moe_layer", "dense_layer")):
            layer = jax.tree.map(lambda a, p=p: a[p], host["blocks"][kind])
            _layer(f"model.layers.{2 * p + j}", layer, j < cfg.moe_per_pair, out)  # MoE: the pair's first n
    out["model.norm.weight"] = host["final_norm"]["scale"]
    target = DTYPES[dtype]

    def cast(name: str, a: np.ndarray) -> np.ndarray:
        keep = any(part in name for part in FP32_NAMES)
        return np.ascontiguousarray(a.astype(np.float32 if keep else target))

    return {name: cast(name, a) for name, a in out.items()}


def parameter_counts(cfg: GLaMConfig, weights: dict[str, np.ndarray]) -> dict[str, int]:
    """Total, per-token activated (k of E experts) and embedding parameters of the exported tensors."""
    total = sum(int(a.size) for a in weights.values())
    experts = sum(int(a.size) for n, a in weights.items() if ".mlp.experts." in n)
    E = cfg.moe.num_experts
    activated = total - experts + (experts * cfg.moe.causal_top_k // E if E else 0)
    return {"total": total, "activated": activated, "embedding": int(weights["model.embed_tokens.weight"].size)}
