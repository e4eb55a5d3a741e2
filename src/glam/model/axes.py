"""Shape letters and the logical axis names of glam's tensors.

Legend (used in every einsum string and shape comment):
  B batch   T query length   S key/sequence length   M d_model   N heads   K head dim
  F ffn hidden   E experts   J a token's top-k choices (moe.top_k)   C expert capacity
  G routing groups   V vocabulary
  L layers   P (MoE, dense) pairs = L/2   R rows of an expert buffer (G·C slots, or sorted assignments)

Logical names map to mesh axes in exactly one place: ``glam.sharding.rules.LOGICAL_RULES``.
"""

# Activation layouts, constrained at block boundaries (reference doc §4: [B, S, M] → (data, None, model)).
BSM = ("act_batch", "act_length", "act_embed")
BSF = ("act_batch", "act_length", "act_mlp")
BSNK = ("act_batch", "act_length", "act_heads", None)
BSV = ("act_batch", "act_length", "act_vocab")
# MoE: tokens grouped for routing, and dispatched to experts.
GSM = ("act_group", None, "act_embed")
GECM = ("act_group", None, None, "act_embed")
EGCM = ("act_expert", "act_group_inner", None, "act_embed")
ERF = ("act_expert", "act_group_inner", "act_mlp")  # the experts' hidden layer, (g, c) merged into rows, g major
