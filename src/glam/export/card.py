"""The model card (``README.md``) of an exported model: what it is, how big, what it read, how well.

Every figure comes from the run: the architecture from its config, the parameter counts from the
exported tensors, the training data from ``data.sources`` and the steps trained, the held-out loss
from the last ``kind: eval`` record of ``RUN/metrics.jsonl`` at or before the exported step.
"""

from __future__ import annotations

import math
import os

from glam.config import GLaMConfig


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit} ({n:,})"
    return f"{n:,}"


def _architecture(cfg: GLaMConfig) -> list[str]:
    m, moe = cfg.model, cfg.moe
    layers = {
        0: str(m.num_layers),
        1: f"{m.num_layers} ({cfg.num_pairs} × (an MoE layer, then a dense layer))",
        2: f"{m.num_layers}, an MoE layer each (moe.layers=all)",
    }[cfg.moe_per_pair]
    rows = [
        ("layers", layers),
        ("d_model", str(m.d_model)),
        (
            "attention",
            f"{m.num_heads} heads × {m.head_dim}, no q scaling, per-layer T5-style causal relative position "
            f"bias ({m.rel_buckets} buckets, max distance {m.rel_max_distance})"
            + (", extra zero logit" if m.extra_zero_logit else ""),
        ),
        ("dense FFN", f"gated GELU (tanh), width {m.ffn_dim}"),
        ("norm", f"RMSNorm pre-norm, eps {m.norm_eps:g}, final norm"),
        ("embedding", f"tied, vocabulary {m.vocab_size}, output logits scaled by d_model^-1/2"),
        ("context", f"{m.max_seq_len} tokens (trained on {cfg.train.seq_len})"),
    ]
    if cfg.is_moe:
        F = moe.expert_dim or m.ffn_dim
        form = {"relu": "ReLU, not gated", "gelu": "GELU, not gated", "geglu": "gated GELU"}[m.expert_activation]
        router = (
            f"top-{moe.top_k} token choice" + (", gates renormalised" if moe.top_k > 1 else "")
            if moe.router == "token_choice"
            else f"expert choice in training; here each token goes to its {moe.causal_top_k} likeliest experts, "
            "gates = their probabilities"
        )
        if moe.balance == "bias":
            router += ", selection bias (aux-loss-free balancing)"
        rows += [
            (
                "experts",
                f"{moe.num_experts} per MoE layer, {form}, width {F}"
                + (f", plus {moe.shared_experts} shared expert(s)" if moe.shared_experts else ""),
            ),
            ("routing", f"{router}; fp32 router; no capacity limit (nothing dropped)"),
        ]
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def _data(cfg: GLaMConfig, step: int | None) -> list[str]:
    lines = []
    if cfg.data.sources:
        lines += ["| source | weight | path |", "|---|---|---|"]
        lines += [
            f"| {s.name} | {s.weight:g} | `{os.path.basename(s.path.rstrip('/')) or s.path}` |"
            for s in cfg.data.sources
        ]
    else:
        lines.append(
            "glam's embedded default corpus: the docstrings and language reference of the Python standard library."
        )
    if step is not None:
        tokens = step * cfg.train.batch_size * cfg.train.seq_len
        lines += [
            "",
            f"Trained for {step:,} steps of {cfg.train.batch_size} × {cfg.train.seq_len} tokens "
            f"({tokens:,} tokens, packed documents, {cfg.optim.name}).",
        ]
    return lines


def _heldout(metrics: dict | None) -> list[str]:
    if not metrics:
        return ["The run recorded no held-out evaluation."]
    values = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("heldout/") and v is not None}
    lines = [
        f"Cross-entropy on held-out documents (nats per token), as glam measured it at step {metrics.get('step')}:",
        "",
        "| held-out set | loss | perplexity |",
        "|---|---|---|",
    ]
    for name in sorted(values, key=lambda n: (n == "mean", n)):
        v = values[name]
        ppl = f"{math.exp(v):.2f}" if isinstance(v, int | float) and v < 50 else "-"
        lines.append(f"| {name} | {v:.4f} | {ppl} |")
    return lines


def model_card(cfg: GLaMConfig, counts: dict, dtype: str, source: dict) -> str:
    step = source.get("step")
    kind = "Mixture-of-Experts" if cfg.is_moe else "dense"
    lines = [
        "---",
        "library_name: transformers",
        "tags: [glam, mixture-of-experts, custom_code]" if cfg.is_moe else "tags: [glam, custom_code]",
        "---",
        "",
        f"# {cfg.name} (GLaM, {kind})",
        "",
        "A decoder-only language model of the GLaM architecture (Du et al., *GLaM: Efficient Scaling of Language "
        "Models with Mixture-of-Experts*, ICML 2022), trained with glam (JAX) and exported by "
        f"`glam export` from checkpoint step {step} ({dtype} weights).",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'tokenizer = AutoTokenizer.from_pretrained("PATH", trust_remote_code=True)  # it reads config.json too',
        'model = AutoModelForCausalLM.from_pretrained("PATH", trust_remote_code=True)',
        'ids = tokenizer("def add(a, b):", return_tensors="pt").input_ids  # <s> is prepended',
        "print(tokenizer.decode(model.generate(ids, max_new_tokens=32)[0], skip_special_tokens=True))",
        "```",
        "",
        "## Architecture",
        "",
        *_architecture(cfg),
        "",
        "## Parameters",
        "",
        "| | |",
        "|---|---|",
        f"| total | {_count(counts['total'])} |",
        f"| activated per token | {_count(counts['activated'])} |",
        f"| of which the (tied) embedding | {_count(counts['embedding'])} |",
        "",
        "## Training data",
        "",
        *_data(cfg, step),
        "",
        "## Held-out loss",
        "",
        *_heldout(source.get("metrics")),
        "",
        "## What the export is and is not",
        "",
        "- Logits equal glam's full forward pass with `moe.eval_no_drop=true` and glam's decoding (each token to its "
        "experts, no capacity limit); glam's training-time capacity cut is not reproduced.",
        "- Each row is one document: positions come from `attention_mask` (left padding is fine); glam's packing of "
        "several documents into one row has no counterpart.",
        "- The tokenizer is glam's SentencePiece model as a fast tokenizer: the same ids up to ties between "
        "segmentations of equal score; a literal `▁` or the text `<s>`, `</s>`, `<pad>`, `<unk>`, `<0xNN>` "
        "encode as those pieces.",
        "- The optimizer state and the data position of the run are not exported.",
        "",
    ]
    return "\n".join(lines)
