"""The config's sections: one typed, frozen dataclass each, checked when built (glam.config).

Sections: ``model`` (architecture, reference doc §2), ``moe`` (gating, §3), ``mesh`` (§4),
``data`` (§6), ``optim`` and ``train`` (§5), ``checkpoint``, ``eval`` (§7).

A config is built from a preset (``presets.py``), optionally a YAML file, and dotted ``key=value``
overrides. Every mistake — an unknown key, a value of the wrong type, a combination that cannot
work — raises :class:`ConfigError` whose message names the field and the fix.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from glam.errors import ConfigError
from glam.model.moe.routers import BALANCERS, ROUTERS

# The routing variants' names come from their registry (glam.model.moe.routers), the one owner.
ROUTER_NAMES = tuple(ROUTERS)
BALANCER_NAMES = tuple(BALANCERS)


def _check(cond: bool, field_name: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{field_name}: {message}")


def _one_of(value: Any, options: tuple, field_name: str) -> None:
    _check(value in options, field_name, f"got {value!r}; choose one of {', '.join(map(repr, options))}")


def choices(cls: type, field_name: str) -> tuple:
    """The options of a ``Literal`` field: the one declaration of each enumeration (its registry, where
    it has one — dispatch paths, expert forms, remat policies, source formats — is tested against it)."""
    return _literal_fields(cls)[field_name]


@functools.cache
def _literal_fields(cls: type) -> dict[str, tuple]:
    hints = typing.get_type_hints(cls)
    return {name: typing.get_args(tp) for name, tp in hints.items() if typing.get_origin(tp) is Literal}


def _check_choices(obj: Any, prefix: str) -> None:
    """Every ``Literal`` field of a config section holds one of its options (configs built in code too)."""
    for name, options in _literal_fields(type(obj)).items():
        _one_of(getattr(obj, name), options, f"{prefix}.{name}")


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """Architecture (reference doc §2). Shape letters: M = d_model, F = ffn_dim, N = heads, K = head_dim."""

    vocab_size: int = 32_000
    d_model: int = 768
    num_layers: int = 12
    num_heads: int = 12
    head_dim: int = 64
    ffn_dim: int = 3072
    expert_activation: Literal["relu", "gelu", "geglu"] = "relu"  # geglu: gated experts (dense FFN form)
    rel_buckets: int = 32
    rel_max_distance: int = 128
    extra_zero_logit: bool = False
    norm_eps: float = 1e-6
    max_seq_len: int = 1024
    scan_layers: bool = True
    remat: Literal["none", "full", "dots", "dots_no_batch", "save_moe_outputs"] = "none"
    activation_dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "head_dim", "ffn_dim"):
            _check(getattr(self, name) > 0, f"model.{name}", "must be a positive integer")
        _check(
            self.num_layers % 2 == 0,
            "model.num_layers",
            f"got {self.num_layers}; GLaM stacks (MoE, dense) pairs, so use an even number of layers",
        )
        _check_choices(self, "model")
        _check(self.rel_buckets >= 4 and self.rel_buckets % 2 == 0, "model.rel_buckets", "use an even number >= 4")
        _check(
            self.rel_max_distance > self.rel_buckets // 2,
            "model.rel_max_distance",
            "must exceed half the number of buckets (the exact-distance range)",
        )
        _check(self.max_seq_len > 0, "model.max_seq_len", "must be positive")
        _check(self.norm_eps > 0, "model.norm_eps", f"got {self.norm_eps}; RMSNorm's epsilon must be > 0 (e.g. 1e-6)")


@dataclass(frozen=True)
class MoEConfig:
    """GShard top-2 gating (reference doc §3) and its variants. ``num_experts = 0`` makes a dense model.

    ``router``: ``token_choice`` (each token picks ``top_k`` experts: 2 = GShard, exactly; 1 = Switch) or
    ``expert_choice`` (Zhou et al. 2022: each expert picks its top-C tokens of the group, C = S·cf/E,
    while training; not causal, so evaluation and decoding route each token to its round(cf) likeliest
    experts with their probabilities as gates, unless ``expert_choice_eval=group``, which keeps the
    non-causal rule for measuring what that costs). ``router_z_loss``: ST-MoE's weight on
    mean(logsumexp(router logits)²) (Zoph et al. 2022; 1e-3 there), distinct from train.z_loss_weight
    on the output logits. ``shared_experts``: always-on experts of the expert form added to the routed
    output (DeepSeekMoE), counted as activated parameters. ``balance=bias``: DeepSeek-V3's
    auxiliary-loss-free balancing — a per-expert bias added to the router scores for choosing experts
    only (gates stay the softmax's), moved after every step by ``bias_rate`` against the sign of the
    expert's load error (glam.model.moe.balance); set ``aux_loss_weight=0`` for no aux loss at all.
    ``balance=global_batch``: the global-batch balance loss (Qiu et al. 2025, Qwen3-MoE), the aux loss
    with each expert's share of first choices counted over the whole batch (on a mesh, a reduction over
    the data axis) instead of per routing group (gating.balance_loss).
    ``layers``: which layers have a MoE FFN. ``alternate`` (GLaM/GShard): layers 0, 2, 4, …, the
    other half a gated dense FFN. ``all`` (Mixtral, DeepSeek): every layer; the pair's second layer
    gets a MoE FFN too, its parameters under the same path ``blocks/dense_layer/ffn`` (so the
    parameter tree and checkpoints of ``alternate`` runs are unchanged). Routing statistics carry one
    leading axis per MoE layer in model order. ``all`` needs ``num_experts > 0``.
    """

    num_experts: int = 64
    router: Literal[ROUTER_NAMES] = "token_choice"
    top_k: int = 2
    expert_choice_eval: Literal["causal", "group"] = "causal"
    capacity_factor_train: float = 2.0
    capacity_factor_eval: float = 2.0
    capacity_multiple: int = 4
    group_size: int = 0  # tokens per routing group; 0 = one group per sequence
    second_expert_policy: Literal["all", "random"] = "all"
    second_expert_threshold: float = 0.5
    aux_loss_weight: float = 0.01
    dispatch: Literal["einsum", "index", "dropless"] = "index"
    eval_no_drop: bool = False
    expert_dim: int = 0  # expert hidden width F_e; 0 = model.ffn_dim
    router_z_loss: float = 0.0
    shared_experts: int = 0
    balance: Literal[BALANCER_NAMES] = "aux_loss"
    bias_rate: float = 1e-3
    layers: Literal["alternate", "all"] = "alternate"

    def __post_init__(self) -> None:
        _check_choices(self, "moe")
        _check(self.num_experts >= 0, "moe.num_experts", "must be >= 0 (0 means a dense model)")
        _check(
            self.layers == "alternate" or self.num_experts > 0,
            "moe.layers",
            "'all' puts a MoE FFN in every layer: it needs moe.num_experts > 0 (or keep 'alternate' for a dense model)",
        )
        _check(
            self.num_experts != 1,
            "moe.num_experts",
            "a MoE layer needs at least 2 experts; use 0 for a dense model",
        )
        _check(
            self.top_k >= 1 and (self.num_experts == 0 or self.top_k <= self.num_experts),
            "moe.top_k",
            f"must be between 1 and moe.num_experts={self.num_experts} (2 = GShard, 1 = Switch)",
        )
        _check(
            self.second_expert_policy == "all" or self.top_k == 2,
            "moe.second_expert_policy",
            "'random' is GShard's rule for a second expert: it needs moe.top_k=2",
        )
        router = ROUTERS[self.router]
        _check(
            router.second_choice or self.second_expert_policy == "all",
            "moe.second_expert_policy",
            f"'random' applies to token choice; {self.router} has no second expert to drop",
        )
        _check(self.router_z_loss >= 0, "moe.router_z_loss", "must be >= 0 (ST-MoE uses 1e-3)")
        _check(self.shared_experts >= 0, "moe.shared_experts", "must be >= 0")
        _check(self.bias_rate > 0, "moe.bias_rate", "must be > 0 (DeepSeek-V3 uses 1e-3)")
        balancer = BALANCERS[self.balance]
        _check(
            self.router in balancer.routers,
            "moe.balance",
            f"{self.balance!r} balances {' and '.join(balancer.routers)}; {self.router} is balanced by construction",
        )
        for name, ok, rule in (
            ("capacity_factor_train", self.capacity_factor_train > 0, "must be > 0 (GLaM uses 2.0)"),
            ("capacity_factor_eval", self.capacity_factor_eval > 0, "must be > 0 (GLaM uses 2.0)"),
            ("capacity_multiple", self.capacity_multiple >= 1, "must be >= 1 (capacity rounds up to a multiple)"),
            ("group_size", self.group_size >= 0, "must be >= 0 (0 = one group per sequence)"),
            ("second_expert_threshold", 0 < self.second_expert_threshold <= 1, "must be in (0, 1]"),
            ("aux_loss_weight", self.aux_loss_weight >= 0, "must be >= 0 (GLaM uses 0.01; 0 = no aux loss)"),
            ("expert_dim", self.expert_dim >= 0, "must be >= 0 (0 = model.ffn_dim)"),
        ):
            _check(ok, f"moe.{name}", f"got {getattr(self, name)!r}; {rule}")

    @property
    def causal_top_k(self) -> int:
        """Experts per token when routing token by token (evaluation, decoding; the activated count):
        the router's rule (glam.model.moe.routers): top_k, or round(cf) for an expert-choice model."""
        return ROUTERS[self.router].causal_k(self)


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh (reference doc §4). -1 in one axis fills the remaining devices."""

    data: int = -1
    model: int = 1
    coordinator_address: str = ""
    num_processes: int = 1
    process_id: int = 0

    def __post_init__(self) -> None:
        _check(self.data == -1 or self.data > 0, "mesh.data", "must be a positive integer or -1")
        _check(self.model == -1 or self.model > 0, "mesh.model", "must be a positive integer or -1")
        _check(not (self.data == -1 and self.model == -1), "mesh", "only one of mesh.data and mesh.model may be -1")
        _check(self.num_processes >= 1, "mesh.num_processes", "must be >= 1")
        _check(
            0 <= self.process_id < self.num_processes,
            "mesh.process_id",
            f"must be in [0, mesh.num_processes={self.num_processes})",
        )
        _check(
            self.num_processes == 1 or bool(self.coordinator_address),
            "mesh.coordinator_address",
            "set it (host:port of process 0) when mesh.num_processes > 1",
        )


@dataclass(frozen=True)
class SourceConfig:
    """One named text source of the training mixture (paper Table 3 is the model)."""

    name: str
    path: str  # a file, a directory, or a glob; "hf:NAME[:CONFIG]" for Hugging Face datasets
    weight: float = 1.0
    format: Literal[
        "auto", "text", "lines", "paragraphs", "json", "jsonl", "csv", "parquet", "xml_posts", "stackexchange", "hf"
    ] = "auto"
    text_field: str = "text"
    heldout_docs: int = -1  # documents of this source held out; -1 = data.heldout_docs

    def __post_init__(self) -> None:
        _check(bool(self.name), "data.sources[].name", "every source needs a name")
        _check(
            self.heldout_docs >= -1,
            f"data.sources[{self.name}].heldout_docs",
            "must be >= 0, or -1 for data.heldout_docs",
        )
        _check(bool(self.path), f"data.sources[{self.name}].path", "every source needs a path")
        _check(
            self.weight > 0,
            f"data.sources[{self.name}].weight",
            f"got {self.weight}; mixture weights must be > 0 (remove the source to leave it out)",
        )
        _check_choices(self, f"data.sources[{self.name}]")


SOURCE_FORMATS = choices(SourceConfig, "format")


@dataclass(frozen=True)
class DataConfig:
    """The training mixture and tokenizer. No sources = the embedded default corpus."""

    sources: tuple[SourceConfig, ...] = ()
    tokenizer: str = ""  # a SentencePiece .model file; "" trains one into the run directory
    tokenizer_sample_docs: int = 20_000
    heldout_docs: int = 8  # documents per source kept out of training for held-out loss (a source may set its own)
    on_bad_json: Literal["skip", "error"] = "skip"
    seed: int = 0
    # Reading shards of each global batch (glam.data.pipeline): the batches depend on it, not on the
    # process count; each process packs only its shards. 0 = the process count the run starts with.
    shards: int = 0

    def __post_init__(self) -> None:
        names = [s.name for s in self.sources]
        _check(len(names) == len(set(names)), "data.sources", f"source names must be unique, got {names}")
        _check(self.heldout_docs >= 0, "data.heldout_docs", "must be >= 0")
        _check_choices(self, "data")
        _check(self.seed >= 0, "data.seed", f"got {self.seed}; the data order's seed must be >= 0")
        _check(self.shards >= 0, "data.shards", f"got {self.shards}; must be >= 0 (0 = the number of processes)")


@dataclass(frozen=True)
class OptimConfig:
    """Adafactor as in the paper (§5) or AdamW with cosine decay."""

    name: Literal["adafactor", "adamw"] = "adafactor"
    warmup_steps: int = 10_000  # Adafactor: lr = lr_scale / sqrt(max(step, warmup_steps))
    lr_scale: float = 1.0
    decay_rate: float = 0.8  # second-moment decay 1 - t^-0.8
    clip_threshold: float = 1.0  # update clipping at RMS 1.0
    min_dim_size_to_factor: int = 128
    epsilon1: float = 1e-30
    epsilon2: float = 1e-3  # parameter-scale floor
    multiply_by_parameter_scale: bool = True
    learning_rate: float = 3e-4  # AdamW peak
    adam_b1: float = 0.9
    adam_b2: float = 0.95
    weight_decay: float = 0.1
    adam_warmup_steps: int = 100
    grad_clip_norm: float = 0.0  # 0 = off (Adafactor clips updates instead)

    def __post_init__(self) -> None:
        _check_choices(self, "optim")
        _check(self.warmup_steps >= 1, "optim.warmup_steps", "must be >= 1")
        _check(self.lr_scale > 0, "optim.lr_scale", "must be > 0")
        _check(self.learning_rate > 0, "optim.learning_rate", "must be > 0")
        _check(self.grad_clip_norm >= 0, "optim.grad_clip_norm", "must be >= 0 (0 = off)")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8  # global, in sequences
    seq_len: int = 1024
    grad_accum: int = 1
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 2
    z_loss_weight: float = 0.0  # reference default 1e-4; not in the paper
    skip_nonfinite: bool = True
    rollback: bool = False  # restart from the last good checkpoint on a loss spike / non-finite streak
    spike_factor: float = 3.0  # a loss above spike_factor x its running mean is a spike
    max_nonfinite_streak: int = 3
    max_rollbacks: int = 3
    peak_flops: float = 0.0  # per device; 0 = measure a matmul at start-up for MFU

    def __post_init__(self) -> None:
        _check(self.steps >= 0, "train.steps", "must be >= 0")
        _check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _check(self.seq_len >= 2, "train.seq_len", "must be >= 2")
        _check(self.grad_accum >= 1, "train.grad_accum", "must be >= 1")
        _check(
            self.batch_size % self.grad_accum == 0,
            "train.grad_accum",
            f"must divide train.batch_size={self.batch_size}",
        )
        _check(self.log_every >= 1, "train.log_every", "must be >= 1")
        _check(self.eval_every >= 1, "train.eval_every", "must be >= 1")
        _check(self.z_loss_weight >= 0, "train.z_loss_weight", "must be >= 0")
        _check(self.spike_factor > 1, "train.spike_factor", "must be > 1")


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 100
    keep: int = 3

    def __post_init__(self) -> None:
        _check(self.every >= 1, "checkpoint.every", "must be >= 1")
        _check(self.keep >= 1, "checkpoint.keep", "must be >= 1")


@dataclass(frozen=True)
class EvalConfig:
    beam_size: int = 4  # paper: beam search width 4 for generation tasks
    max_decode_tokens: int = 32
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.beam_size >= 1, "eval.beam_size", "must be >= 1")
        _check(self.max_decode_tokens >= 1, "eval.max_decode_tokens", "must be >= 1")
        _check(self.batch_size >= 1, "eval.batch_size", "must be >= 1")


@dataclass(frozen=True)
class GLaMConfig:
    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.is_moe:
            g = self.moe.group_size
            tokens = self.train.batch_size // self.train.grad_accum * self.train.seq_len
            _check(
                g == 0 or tokens % g == 0,
                "moe.group_size",
                f"{g} must divide the tokens per micro-batch ({tokens} = batch/grad_accum x seq_len)",
            )
        _check(
            self.train.seq_len <= self.model.max_seq_len,
            "train.seq_len",
            f"{self.train.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}; raise model.max_seq_len",
        )

    # Derived sizes -------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        """Whether the model has MoE layers (moe.num_experts > 0): the one test of it."""
        return self.moe.num_experts > 0

    @property
    def num_pairs(self) -> int:
        """Number of (MoE, dense) pair-blocks, L/2."""
        return self.model.num_layers // 2

    @property
    def moe_per_pair(self) -> int:
        """MoE layers in each pair: 0 (dense), 1 (moe.layers=alternate) or 2 (moe.layers=all)."""
        return 0 if not self.is_moe else 2 if self.moe.layers == "all" else 1

    @property
    def num_moe_layers(self) -> int:
        """MoE layers in the model: L/2 (alternate), L (all) or 0 (dense)."""
        return self.num_pairs * self.moe_per_pair

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
