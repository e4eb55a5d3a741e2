"""GLaM in PyTorch for ``transformers``, as exported by ``glam export`` (Du et al., ICML 2022).

Self-contained: it needs ``torch`` and ``transformers`` only, not glam, and computes what glam's JAX
model computes (glam's tests compare the two):

- pre-norm layers, ``x += attn(norm(x))``, ``x += ffn(norm(x))``, RMSNorm (no mean, no bias) in fp32,
  a final norm, the tied embedding with the output scale: ``logits = (norm(h) · M^-1/2) @ Emb^T``;
  the input embedding is not scaled;
- attention without biases and without the 1/sqrt(K) scaling of q (GLaM folds it into the
  initialisation), plus a per-layer T5-style causal relative position bias [N, 32 buckets] looked up
  with the bucket of q_pos − k_pos; softmax in fp32, optionally with an extra zero logit;
- the dense FFN (layers 1, 3, 5, ...): gated GELU (tanh), ``(gelu(x W_gate) * (x W_up)) W_down``;
- the MoE FFN (layers 0, 2, 4, ...): a router W_g [M, E] in fp32, softmax, each token to its top-k
  experts (chosen by softmax + bias where the model has a router bias), the k gates renormalised to
  sum to 1 where ``renormalize_gates``; no capacity: nothing is dropped (glam's decode steps, and its
  full forward pass with ``moe.eval_no_drop=true``). Experts ``act(x W_in[e]) W_out[e]`` (ReLU or
  GELU), or gated ``(gelu(x W_gate[e]) * x W_in[e]) W_out[e]`` (geglu); shared experts of the same
  form run on every token and are added.

Positions: the relative bias needs only differences of positions; a token's position is the number of
attended tokens before it in its row (``attention_mask``), so left padding changes nothing. A row is
one document: glam's packing of several documents into one row (segment ids) has no counterpart here.

``output_router_logits=True`` returns each MoE layer's router logits [B·T, E] (as Mixtral does) and
``aux_loss``, glam's load-balancing loss E²·mean_e(f_e·P_e) per sequence (f from first choices of
attended tokens, P the mean gate), averaged over sequences and summed over MoE layers; with ``labels``
it is added to the loss times ``router_aux_loss_coef``.
"""

from __future__ import annotations

import math
from dataclasses import fields

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast

from .configuration_glam import GlamConfig

NEG_INF = -1e30
# transformers 5.x renamed the cache argument and output field from past_key_values to cache.
_CACHE_FIELD = "cache" if "cache" in {f.name for f in fields(MoeCausalLMOutputWithPast)} else "past_key_values"


def gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {"relu": F.relu, "gelu": gelu, "geglu": gelu}


def relative_bucket(distance: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Causal T5 bucket of ``distance = q_pos − k_pos`` (negative distances clamp to 0)."""
    n = distance.clamp(min=0)
    exact = num_buckets // 2
    n_safe = n.clamp(min=exact).to(torch.float32)
    log_bucket = exact + (torch.log(n_safe / exact) / math.log(max_distance / exact) * exact).to(torch.int64)
    log_bucket = log_bucket.clamp(max=num_buckets - 1)
    return torch.where(n < exact, n, log_bucket)


class GlamRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.to(torch.float32)
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.to(torch.float32)
        return y.to(x.dtype)


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, extra_zero_logit: bool) -> torch.Tensor:
    """Softmax over the last axis in fp32 where ``mask``; a fully masked row gives zeros."""
    logits = torch.where(mask, logits.to(torch.float32), torch.full_like(logits, NEG_INF, dtype=torch.float32))
    m = logits.amax(-1, keepdim=True)
    if extra_zero_logit:
        m = m.clamp(min=0.0)
    e = torch.where(mask, torch.exp(logits - m), torch.zeros_like(logits))
    denom = e.sum(-1, keepdim=True)
    if extra_zero_logit:
        denom = denom + torch.exp(-m)
    return e / torch.where(denom > 0, denom, torch.ones_like(denom))


class GlamAttention(nn.Module):
    def __init__(self, config: GlamConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.config = config
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        inner = self.num_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, inner, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, inner, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, inner, bias=False)
        self.o_proj = nn.Linear(inner, config.hidden_size, bias=False)
        self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, self.num_heads)

    def forward(self, x, q_pos, k_pos, mask, cache: Cache | None):
        B, T, _ = x.shape
        q, k, v = (
            p(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # [B, N, S, K]
        logits = torch.matmul(q.to(torch.float32), k.to(torch.float32).transpose(-1, -2))  # [B, N, T, S]
        buckets = relative_bucket(
            q_pos[:, :, None] - k_pos[:, None, :],
            self.config.relative_attention_num_buckets,
            self.config.relative_attention_max_distance,
        )
        bias = self.relative_attention_bias.weight.to(torch.float32)[buckets]  # [B, T, S, N]
        logits = logits + bias.permute(0, 3, 1, 2)
        probs = masked_softmax(logits, mask, self.config.extra_zero_logit).to(v.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(B, T, -1)
        return self.o_proj(out), probs


class GlamMLP(nn.Module):
    """The gated FFN ``(act(x W_gate) * (x W_up)) W_down`` (dense: act = GELU), or ``act(x W_up) W_down``."""

    def __init__(self, hidden_size: int, intermediate_size: int, activation: str = "geglu"):
        super().__init__()
        self.act = ACTIVATIONS[activation]
        self.gated = activation == "geglu"
        if self.gated:
            self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.gate_proj(x)) * self.up_proj(x) if self.gated else self.act(self.up_proj(x))
        return self.down_proj(h)


class GlamExperts(nn.Module):
    """E experts stacked as glam stores them: w_in, w_gate [E, M, F], w_out [E, F, M]."""

    def __init__(self, config: GlamConfig):
        super().__init__()
        E, M, Fe = config.num_local_experts, config.hidden_size, config.expert_intermediate_size
        self.act = ACTIVATIONS[config.expert_activation]
        self.gated = config.expert_activation == "geglu"
        self.w_in = nn.Parameter(torch.empty(E, M, Fe))
        if self.gated:
            self.w_gate = nn.Parameter(torch.empty(E, M, Fe))
        self.w_out = nn.Parameter(torch.empty(E, Fe, M))

    def forward(self, x: torch.Tensor, expert: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """x [T, M], expert and gate [T, k] → Σ_j gate_j · expert_{e_j}(x) [T, M]."""
        out = torch.zeros_like(x)
        for e in torch.unique(expert).tolist():
            token, slot = torch.nonzero(expert == e, as_tuple=True)
            xe = x[token]
            h = xe @ self.w_in[e]
            h = self.act(xe @ self.w_gate[e]) * h if self.gated else self.act(h)
            out.index_add_(0, token, (h @ self.w_out[e]) * gate[token, slot, None].to(x.dtype))
        return out


class GlamSparseMoeBlock(nn.Module):
    def __init__(self, config: GlamConfig):
        super().__init__()
        self.config = config
        self.router = nn.Linear(config.hidden_size, config.num_local_experts, bias=False)
        if config.router_bias:
            self.router_bias = nn.Parameter(torch.zeros(config.num_local_experts))
        self.experts = GlamExperts(config)
        if config.num_shared_experts:
            width = config.num_shared_experts * config.expert_intermediate_size
            self.shared_experts = GlamMLP(config.hidden_size, width, config.expert_activation)

    def route(self, x: torch.Tensor):
        """x [T, M] → (router logits [T, E] fp32, expert [T, k], gate [T, k] fp32)."""
        logits = F.linear(x.to(torch.float32), self.router.weight.to(torch.float32))
        probs = torch.softmax(logits, dim=-1)
        k = self.config.num_experts_per_tok
        if self.config.router_bias:
            _, expert = torch.topk(probs + self.router_bias.to(torch.float32), k, dim=-1)
            gate = torch.gather(probs, -1, expert)
        else:
            gate, expert = torch.topk(probs, k, dim=-1)
        if k > 1 and self.config.renormalize_gates:
            gate = gate / gate.sum(-1, keepdim=True)
        return logits, expert, gate

    def forward(self, x: torch.Tensor):
        B, T, M = x.shape
        flat = x.reshape(B * T, M)
        logits, expert, gate = self.route(flat)
        y = self.experts(flat, expert, gate)
        if self.config.num_shared_experts:
            y = y + self.shared_experts(flat)
        return y.reshape(B, T, M), (logits, expert)


class GlamDecoderLayer(nn.Module):
    def __init__(self, config: GlamConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = GlamRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = GlamAttention(config, layer_idx)
        self.post_attention_layernorm = GlamRMSNorm(config.hidden_size, config.rms_norm_eps)
        # MoE first in each pair, or in every layer (moe_every_layer)
        self.is_moe = config.num_local_experts > 0 and (layer_idx % 2 == 0 or config.moe_every_layer)
        if self.is_moe:
            self.mlp = GlamSparseMoeBlock(config)
        else:
            self.mlp = GlamMLP(config.hidden_size, config.intermediate_size, "geglu")

    def forward(self, x, q_pos, k_pos, mask, cache):
        h, probs = self.self_attn(self.input_layernorm(x), q_pos, k_pos, mask, cache)
        x = x + h
        h = self.post_attention_layernorm(x)
        routing = None
        if self.is_moe:
            h, routing = self.mlp(h)
        else:
            h = self.mlp(h)
        return x + h, routing, probs


class GlamPreTrainedModel(PreTrainedModel):
    config_class = GlamConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["GlamDecoderLayer"]
    # GLaM's router and relative bias run in fp32 (reference doc §2, §3): kept so in a bf16 load.
    _keep_in_fp32_modules_strict = ["router", "relative_attention_bias"]

    def _init_weights(self, module):
        # Exports carry every weight; this only fills a model built from a config alone.
        std = 0.02
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, GlamExperts):
            for p in module.parameters():
                nn.init.normal_(p, std=std)
        elif isinstance(module, GlamRMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, GlamSparseMoeBlock) and hasattr(module, "router_bias"):
            nn.init.zeros_(module.router_bias)


def _positions_and_mask(attention_mask, B: int, T: int, past: int, device):
    """(q_pos [B, T], k_pos [B, S], mask [B, 1, T, S]) for T new tokens after ``past`` cached ones."""
    S = past + T
    if attention_mask is None:
        valid = torch.ones(B, S, dtype=torch.bool, device=device)
    else:
        valid = attention_mask.to(device=device, dtype=torch.bool)
        if valid.shape[1] < S:  # a mask of the new tokens only: the cached ones were all attended
            valid = torch.cat([torch.ones(B, S - valid.shape[1], dtype=torch.bool, device=device), valid], dim=1)
        valid = valid[:, -S:]
    k_pos = torch.cumsum(valid.to(torch.int64), dim=1) - 1
    q_pos = k_pos[:, past:]
    q_idx = torch.arange(past, S, device=device)
    causal = torch.arange(S, device=device)[None, :] <= q_idx[:, None]  # [T, S]
    mask = valid[:, None, None, :] & causal[None, None, :, :]
    return q_pos, k_pos, mask


class GlamModel(GlamPreTrainedModel):
    def __init__(self, config: GlamConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([GlamDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = GlamRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,  # unused: positions come from attention_mask (module doc)
        cache=None,
        inputs_embeds=None,
        use_cache=None,
        output_attentions=False,
        output_hidden_states=False,
        past_key_values=None,
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T, _ = x.shape
        past = cache.get_seq_length() if cache is not None else 0
        q_pos, k_pos, mask = _positions_and_mask(attention_mask, B, T, past, x.device)
        hidden, attentions, routing = [], [], []
        for layer in self.layers:
            if output_hidden_states:
                hidden.append(x)
            x, route, probs = layer(x, q_pos, k_pos, mask, cache)
            if route is not None:
                routing.append(route)
            if output_attentions:
                attentions.append(probs)
        x = self.norm(x)
        if output_hidden_states:
            hidden.append(x)
        out = MoeModelOutputWithPast(
            last_hidden_state=x,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
            **{_CACHE_FIELD: cache if use_cache else None},
        )
        out.routing = routing
        return out


def load_balancing_loss(routing, attention_mask, num_experts: int) -> torch.Tensor:
    """glam's aux loss summed over MoE layers: per sequence E²·mean_e(f_e·P_e), averaged over sequences."""
    total = 0.0
    for logits, expert in routing:
        T_all = logits.shape[0]
        B = attention_mask.shape[0] if attention_mask is not None else 1
        probs = torch.softmax(logits, dim=-1).view(B, T_all // B, num_experts)
        first = F.one_hot(expert[:, 0], num_experts).to(torch.float32).view(B, T_all // B, num_experts)
        if attention_mask is not None:
            first = first * attention_mask[:, -probs.shape[1] :, None].to(torch.float32)
        f, p = first.mean(1), probs.mean(1)  # [B, E]
        total = total + ((f * p).mean(-1) * num_experts**2).mean()
    return torch.as_tensor(total)


class GlamForCausalLM(GlamPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: GlamConfig):
        super().__init__(config)
        self.model = GlamModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_router_logits=None,
        output_attentions=False,
        output_hidden_states=False,
        logits_to_keep=0,
        return_dict=True,
        past_key_values=None,
        **kwargs,
    ):
        output_router_logits = (
            self.config.output_router_logits if output_router_logits is None else output_router_logits
        )
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        h = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            h = h[:, -logits_to_keep:]
        h = h.to(torch.float32) * self.config.hidden_size**-0.5  # the tied embedding's output scale
        logits = self.lm_head(h.to(self.lm_head.weight.dtype)).to(torch.float32)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1).to(logits.device),
                ignore_index=-100,
            )
        aux_loss, router_logits = None, None
        if output_router_logits and outputs.routing:
            router_logits = tuple(logits_ for logits_, _ in outputs.routing)
            aux_loss = load_balancing_loss(outputs.routing, attention_mask, self.config.num_local_experts)
            if loss is not None:
                loss = loss + self.config.router_aux_loss_coef * aux_loss
        result = MoeCausalLMOutputWithPast(
            loss=loss,
            aux_loss=aux_loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            router_logits=router_logits,
            **{_CACHE_FIELD: getattr(outputs, _CACHE_FIELD)},
        )
        return result if return_dict else result.to_tuple()
