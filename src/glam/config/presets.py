"""Presets: one per row of the paper's model table (GLaM Table 4), plus small CPU presets.

Each paper row is a keyword row that carries everything it sets, its vocabulary included: V = 32,000
reproduces the rows of Table 4 except 64B/64E, which needs the real 256K SentencePiece vocabulary
(reference doc §1); ``model.vocab_size`` overrides any of them. Every preset names the command that
uses it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from glam.config.sections import (
    CheckpointConfig,
    GLaMConfig,
    ModelConfig,
    MoEConfig,
    OptimConfig,
    TrainConfig,
)
from glam.errors import ConfigError


@dataclass(frozen=True)
class PaperFigures:
    """The paper's own figures for a Table 4 row, shown beside ours by ``glam info``."""

    total: float
    activated: float
    note: str = ""


PAPER_FIGURES: dict[str, PaperFigures] = {
    "dense-0.1b": PaperFigures(130e6, 130e6, "does not reproduce with any vocabulary (reference doc §1)"),
    "glam-0.1b-64e": PaperFigures(1.9e9, 145e6, "does not reproduce with any vocabulary (reference doc §1)"),
    "dense-1.7b": PaperFigures(1.700e9, 1.700e9),
    "glam-1.7b-32e": PaperFigures(20e9, 1.878e9, "total does not reproduce: the counting rule gives ~14B"),
    "glam-1.7b-64e": PaperFigures(27e9, 1.879e9),
    "glam-1.7b-128e": PaperFigures(53e9, 1.881e9),
    "glam-1.7b-256e": PaperFigures(105e9, 1.886e9),
    "dense-8b": PaperFigures(8.7e9, 8.7e9),
    "glam-8b-64e": PaperFigures(143e9, 9.8e9),
    "dense-137b": PaperFigures(137e9, 137e9),
    "glam-64b-64e": PaperFigures(1.2e12, 96.6e9, "needs the 256K vocabulary; 1.2T is rounded"),
}


@dataclass(frozen=True)
class PaperRow:
    """One row of Table 4. Used by ``glam info NAME`` (counts against the paper) and
    ``glam plan NAME --mesh DATAxMODEL`` (the compiled step on a simulated mesh)."""

    layers: int
    d_model: int
    ffn_dim: int
    heads: int
    head_dim: int
    experts: int
    vocab: int = 32_000

    def config(self, name: str) -> GLaMConfig:
        return GLaMConfig(
            name=name,
            model=ModelConfig(
                vocab_size=self.vocab,
                d_model=self.d_model,
                num_layers=self.layers,
                num_heads=self.heads,
                head_dim=self.head_dim,
                ffn_dim=self.ffn_dim,
                remat="full",  # the reference rematerialises the whole repeated block (§5)
            ),
            moe=MoEConfig(num_experts=self.experts),
            train=TrainConfig(batch_size=1024, seq_len=1024),  # ~1M tokens per batch (§1)
        )


_1_7B = {"layers": 24, "d_model": 2048, "ffn_dim": 8192, "heads": 16, "head_dim": 128}
_8B = {"layers": 32, "d_model": 4096, "ffn_dim": 16384, "heads": 32, "head_dim": 128}
_0_1B = {"layers": 12, "d_model": 768, "ffn_dim": 3072, "heads": 12, "head_dim": 64}
PAPER_ROWS: dict[str, PaperRow] = {
    "dense-0.1b": PaperRow(**_0_1B, experts=0),
    "glam-0.1b-64e": PaperRow(**_0_1B, experts=64),
    "dense-1.7b": PaperRow(**_1_7B, experts=0),
    "glam-1.7b-32e": PaperRow(**_1_7B, experts=32),
    "glam-1.7b-64e": PaperRow(**_1_7B, experts=64),
    "glam-1.7b-128e": PaperRow(**_1_7B, experts=128),
    "glam-1.7b-256e": PaperRow(**_1_7B, experts=256),
    "dense-8b": PaperRow(**_8B, experts=0),
    "glam-8b-64e": PaperRow(**_8B, experts=64),
    "dense-137b": PaperRow(layers=64, d_model=8192, ffn_dim=65536, heads=128, head_dim=128, experts=0),
    "glam-64b-64e": PaperRow(
        layers=64, d_model=8192, ffn_dim=32768, heads=128, head_dim=128, experts=64, vocab=256_000
    ),
}


def tiny() -> GLaMConfig:
    """A few million parameters and 8 experts: trains on this 2-core CPU in minutes.
    ``glam train tiny --run-dir runs/tiny`` (``make demo`` runs it)."""
    return GLaMConfig(
        name="tiny",
        model=ModelConfig(
            vocab_size=4096,
            d_model=128,
            num_layers=4,
            num_heads=4,
            head_dim=32,
            ffn_dim=768,
            max_seq_len=256,
        ),
        moe=MoEConfig(num_experts=8, capacity_factor_train=2.0, capacity_factor_eval=2.0),
        optim=OptimConfig(warmup_steps=100, lr_scale=0.5),
        train=TrainConfig(steps=300, batch_size=16, seq_len=128, log_every=10, eval_every=50),
        checkpoint=CheckpointConfig(every=100, keep=3),
    )


def tiny_dense() -> GLaMConfig:
    """The dense twin of ``tiny`` with equal activated parameters per token
    (``glam train tiny-dense --run-dir runs/tiny-dense``, the comparison of docs/results.md).

    ``tiny`` activates, per pair of layers, one gated FFN (3·M·F) and two experts (2·2·M·F):
    7·M·F. A dense pair has two gated FFNs, 2·3·M·F', so F' = 7F/6 = 896 for F = 768.
    """
    cfg = tiny()
    return dataclasses.replace(
        cfg,
        name="tiny-dense",
        model=dataclasses.replace(cfg.model, ffn_dim=cfg.model.ffn_dim * 7 // 6),
        moe=dataclasses.replace(cfg.moe, num_experts=0),
    )


PRESETS = {name: (lambda n=name, row=row: row.config(n)) for name, row in PAPER_ROWS.items()}
PRESETS["tiny"] = tiny
PRESETS["tiny-dense"] = tiny_dense
PAPER_PRESETS = tuple(PAPER_ROWS)


def get_preset(name: str) -> GLaMConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} (or pass a .yaml config file)")
    return PRESETS[name]()
