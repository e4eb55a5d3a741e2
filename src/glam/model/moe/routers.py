"""The routing variants: one registered object per router and per balancer (style §15).

A router says how it trains (its rule for a routing group), how it routes causally (token by token,
``causal_k`` experts per token: evaluation, scoring, prefill and decoding), whether its causal gates
are renormalised, and which statistics it reports. A balancer says how expert loads are evened out:
which selection bias the router adds, what it reports, and how a training step moves its state.
The config takes its choices' names from :data:`ROUTERS` and :data:`BALANCERS` and its cross-checks
from their fields; the MoE layer, the decode step, the slow reference (``reference.py``), the
parameter/FLOP counts (``flops.py``) and ``glam info`` all read the same objects. A new router is one
entry here, its gating function and reference, and their tests.

This module imports no JAX at load time: the config reads it when it is built. The methods that
route import the gating and dispatch modules when they run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from glam.config import GLaMConfig, MoEConfig

#: the routing statistics every router reports per MoE layer (gating.routing_stats builds them)
STATS = ("aux_loss", "dropped_first", "dropped_second", "expert_load", "gate_entropy", "unused_experts")


@dataclass(frozen=True)
class Router:
    """A routing rule. ``route`` runs it on groups [G, S, M] inside the MoE layer."""

    name: str
    trains: str  # how it trains, one line (docs, ``glam info --json``)
    renormalizes: bool  # causal rule: k >= 2 gates renormalised to sum to 1 (else the softmax's own)
    second_choice: bool  # GShard's second-expert policy (moe.second_expert_policy=random) applies
    stats: tuple[str, ...] = STATS

    def causal_k(self, moe: MoEConfig) -> int:
        """Experts per token when routing token by token (evaluation and decoding)."""
        raise NotImplementedError

    def group_rule(self, moe: MoEConfig, train: bool) -> bool:
        """Whether a pass routes by the training rule of the whole group (else the causal rule)."""
        return False

    def label(self, moe: MoEConfig) -> str:
        """The layout's words for this router (``glam info``)."""
        raise NotImplementedError

    def route(self, ffn, xg, logits, valid, *, train: bool, rng, capacity: int, group_capacity: int):
        """Groups xg [G, S, M] with router logits [G, S, E] → (y [G, S, M], statistics).

        ``capacity``: the slots per expert and group of this pass (S for dropless dispatch and
        ``eval_no_drop``); ``group_capacity``: the capacity factor's C, which a group rule uses."""
        from glam.model.moe.dispatch import DISPATCH
        from glam.model.moe.gating import topk_gating

        moe = ffn.moe
        routing = topk_gating(
            logits,
            capacity,
            k=self.causal_k(moe),
            renormalize=self.renormalizes,
            bias=BALANCERS[moe.balance].selection_bias(ffn),
            second_policy=moe.second_expert_policy if train else "all",
            second_threshold=moe.second_expert_threshold,
            rng=rng,
            valid=valid,
            aux_scope=BALANCERS[moe.balance].aux_scope,
        )
        return DISPATCH[moe.dispatch](xg, routing, ffn, moe.num_experts, capacity), routing.stats


@dataclass(frozen=True)
class TokenChoice(Router):
    """GShard top-k (k = ``moe.top_k``; 2 = GShard, 1 = Switch): the same rule in training and eval."""

    def causal_k(self, moe: MoEConfig) -> int:
        return moe.top_k

    def label(self, moe: MoEConfig) -> str:
        return f"top-{moe.top_k}"


@dataclass(frozen=True)
class ExpertChoice(Router):
    """Zhou et al. 2022: each expert takes its top-C tokens of the group while training. Not causal, so
    otherwise each token goes to its round(cf) likeliest experts with their probabilities as gates."""

    def causal_k(self, moe: MoEConfig) -> int:
        # cf = capacity_factor_train is the average number of experts a token gets in training
        return max(1, min(round(moe.capacity_factor_train), moe.num_experts or 1))

    def group_rule(self, moe: MoEConfig, train: bool) -> bool:
        return train or moe.expert_choice_eval == "group"

    def label(self, moe: MoEConfig) -> str:
        return f"expert choice, cf {moe.capacity_factor_train:g}; causal top-{self.causal_k(moe)}"

    def route(self, ffn, xg, logits, valid, *, train: bool, rng, capacity: int, group_capacity: int):
        if not self.group_rule(ffn.moe, train):
            return super().route(
                ffn, xg, logits, valid, train=train, rng=rng, capacity=capacity, group_capacity=group_capacity
            )
        from glam.model.moe.dispatch import expert_choice_dispatch
        from glam.model.moe.gating import expert_choice_gating

        plan = expert_choice_gating(logits, group_capacity, valid)
        return expert_choice_dispatch(xg, plan, ffn), plan.stats


ROUTERS: dict[str, Router] = {
    "token_choice": TokenChoice(
        "token_choice",
        trains="each token takes its top_k experts; capacity slots to first choices first (GShard)",
        renormalizes=True,
        second_choice=True,
    ),
    "expert_choice": ExpertChoice(
        "expert_choice",
        trains="each expert takes its top-C tokens of the group, C = S·cf/E (no aux loss needed)",
        renormalizes=False,
        second_choice=False,
    ),
}


@dataclass(frozen=True)
class Balancer:
    """How expert loads are evened out. The aux loss (weight ``moe.aux_loss_weight``) is always
    reported and weighed, its expert fractions counted per routing group (GShard) or over the whole
    batch (``aux_scope``: gating.balance_loss); a balancer may add a selection bias on top."""

    name: str
    trains: str
    routers: tuple[str, ...]  # the routers it balances
    bias: bool  # the layer holds ``router_bias`` [E], added to the scores for choosing only
    stats: tuple[str, ...] = ()  # statistics it adds to its router's
    aux_scope: str = "group"  # "group" | "batch": where the aux loss counts expert fractions

    def selection_bias(self, ffn) -> Any:
        """The layer's selection bias [E], or None."""
        return ffn.router_bias[...] if self.bias else None

    def update(self, cfg: GLaMConfig, updates: dict, moe_stats: dict) -> dict:
        """The optimizer's ``updates`` as this balancer wants them applied (unchanged by default)."""
        return updates


@dataclass(frozen=True)
class BiasBalancer(Balancer):
    """DeepSeek-V3's auxiliary-loss-free balancing (glam.model.moe.balance)."""

    def update(self, cfg: GLaMConfig, updates: dict, moe_stats: dict) -> dict:
        from glam.model.moe.balance import replace_bias_update

        return replace_bias_update(cfg, updates, moe_stats)


BALANCERS: dict[str, Balancer] = {
    "aux_loss": Balancer(
        "aux_loss",
        trains="GShard's aux loss E²·mean(f·P), weight moe.aux_loss_weight",
        routers=tuple(ROUTERS),
        bias=False,
    ),
    "global_batch": Balancer(
        "global_batch",
        trains="the aux loss with expert fractions over the whole batch, not per group (Qiu et al. 2025), "
        "weight moe.aux_loss_weight",
        routers=("token_choice",),
        bias=False,
        aux_scope="batch",
    ),
    "bias": BiasBalancer(
        "bias",
        trains="a per-expert selection bias moved by ±moe.bias_rate after each step against the load error",
        routers=("token_choice",),
        bias=True,
        stats=("expert_chosen",),
    ),
}
