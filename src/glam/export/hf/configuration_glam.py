"""Configuration of a GLaM model exported by ``glam export`` (Du et al., ICML 2022, arXiv 2112.06905).

Self-contained: it needs ``transformers`` only, not glam. The fields and what glam calls them:

- ``hidden_size`` M (model.d_model), ``num_hidden_layers`` L (model.num_layers), ``num_attention_heads``
  N, ``head_dim`` K, ``intermediate_size`` F of the dense gated-GELU FFN (model.ffn_dim),
  ``rms_norm_eps`` (model.norm_eps), ``max_position_embeddings`` (model.max_seq_len);
- ``relative_attention_num_buckets`` / ``relative_attention_max_distance``: the per-layer T5-style
  causal relative position bias (model.rel_buckets, model.rel_max_distance);
- ``extra_zero_logit``: an implicit extra logit of 0 in every attention softmax (model.extra_zero_logit);
- ``num_local_experts`` E (0: a dense model), MoE in layers 0, 2, 4, ... (GLaM), or in every layer
  with ``moe_every_layer`` (moe.layers=all: Mixtral, DeepSeek); ``num_experts_per_tok`` k,
  the experts each token goes to; ``renormalize_gates``: the k gates renormalised to sum to 1 (token
  choice, k >= 2) or the softmax probabilities as they are (k = 1, or an expert-choice model's causal
  rule); ``router_bias``: a per-expert bias added to the router's scores for choosing experts only
  (moe.balance=bias); ``expert_activation`` relu | gelu | geglu (gated); ``expert_intermediate_size``
  F_e; ``num_shared_experts``: always-on experts of the expert form (moe.shared_experts);
- ``router_aux_loss_coef``: the weight of glam's load-balancing loss (moe.aux_loss_weight), added to
  the loss when ``labels`` and ``output_router_logits`` are given.
"""

from __future__ import annotations

try:
    from transformers import PreTrainedConfig
except ImportError:  # transformers before 5 spells it PretrainedConfig
    from transformers import PretrainedConfig as PreTrainedConfig


class GlamConfig(PreTrainedConfig):
    model_type = "glam"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        head_dim: int = 64,
        intermediate_size: int = 3072,
        relative_attention_num_buckets: int = 32,
        relative_attention_max_distance: int = 128,
        extra_zero_logit: bool = False,
        rms_norm_eps: float = 1e-6,
        max_position_embeddings: int = 1024,
        num_local_experts: int = 64,
        num_experts_per_tok: int = 2,
        renormalize_gates: bool = True,
        router_bias: bool = False,
        expert_activation: str = "relu",
        expert_intermediate_size: int = 3072,
        num_shared_experts: int = 0,
        router_aux_loss_coef: float = 0.01,
        moe_every_layer: bool = False,
        output_router_logits: bool = False,
        use_cache: bool = True,
        pad_token_id: int = 0,
        bos_token_id: int = 2,
        eos_token_id: int = 3,
        tie_word_embeddings: bool = True,
        **kwargs,
    ):
        if expert_activation not in ("relu", "gelu", "geglu"):
            raise ValueError(f"expert_activation={expert_activation!r}: choose relu, gelu or geglu")
        if num_hidden_layers % 2:
            raise ValueError(
                f"num_hidden_layers={num_hidden_layers}: GLaM stacks (MoE, dense) pairs, use an even number"
            )
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads
        self.head_dim = head_dim
        self.intermediate_size = intermediate_size
        self.relative_attention_num_buckets = relative_attention_num_buckets
        self.relative_attention_max_distance = relative_attention_max_distance
        self.extra_zero_logit = extra_zero_logit
        self.rms_norm_eps = rms_norm_eps
        self.max_position_embeddings = max_position_embeddings
        self.num_local_experts = num_local_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.renormalize_gates = renormalize_gates
        self.router_bias = router_bias
        self.expert_activation = expert_activation
        self.expert_intermediate_size = expert_intermediate_size
        self.num_shared_experts = num_shared_experts
        self.router_aux_loss_coef = router_aux_loss_coef
        self.moe_every_layer = moe_every_layer
        self.output_router_logits = output_router_logits
        self.use_cache = use_cache
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
