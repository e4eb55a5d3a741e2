"""Presets: one per row of the paper's model table (GLaM Table 4), plus small CPU presets.

Vocabulary: the rows of Table 4 reproduce with V = 32,000 except 64B/64E, which needs the real
256K SentencePiece vocabulary (reference doc §1); those are the defaults here, and
``model.vocab_size`` overrides them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from glam.config import (
    CheckpointConfig,
    ConfigError,
    GLaMConfig,
    ModelConfig,
    MoEConfig,
    OptimConfig,
    TrainConfig,
)


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


def _paper_row(
    name: str, layers: int, d_model: int, ffn: int, heads: int, head_dim: int, experts: int, vocab: int = 32_000
) -> GLaMConfig:
    return GLaMConfig(
        name=name,
        model=ModelConfig(
            vocab_size=vocab,
            d_model=d_model,
            num_layers=layers,
            num_heads=heads,
            head_dim=head_dim,
            ffn_dim=ffn,
            remat="full",  # the reference rematerialises the whole repeated block (§5)
        ),
        moe=MoEConfig(num_experts=experts),
        train=TrainConfig(batch_size=1024, seq_len=1024),  # ~1M tokens per batch (§1)
    )


_PAPER_ROWS = {
    "dense-0.1b": (12, 768, 3072, 12, 64, 0),
    "glam-0.1b-64e": (12, 768, 3072, 12, 64, 64),
    "dense-1.7b": (24, 2048, 8192, 16, 128, 0),
    "glam-1.7b-32e": (24, 2048, 8192, 16, 128, 32),
    "glam-1.7b-64e": (24, 2048, 8192, 16, 128, 64),
    "glam-1.7b-128e": (24, 2048, 8192, 16, 128, 128),
    "glam-1.7b-256e": (24, 2048, 8192, 16, 128, 256),
    "dense-8b": (32, 4096, 16384, 32, 128, 0),
    "glam-8b-64e": (32, 4096, 16384, 32, 128, 64),
    "dense-137b": (64, 8192, 65536, 128, 128, 0),
    "glam-64b-64e": (64, 8192, 32768, 128, 128, 64),
}


def tiny() -> GLaMConfig:
    """A few million parameters and 8 experts: trains on this 2-core CPU in minutes."""
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
    """The dense twin of ``tiny`` with equal activated parameters per token.

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


def _make_paper(name: str) -> GLaMConfig:
    row = _PAPER_ROWS[name]
    vocab = 256_000 if name == "glam-64b-64e" else 32_000
    return _paper_row(name, *row, vocab=vocab)


PRESETS = {name: (lambda n=name: _make_paper(n)) for name in _PAPER_ROWS}
PRESETS["tiny"] = tiny
PRESETS["tiny-dense"] = tiny_dense
PAPER_PRESETS = tuple(_PAPER_ROWS)


def get_preset(name: str) -> GLaMConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} (or pass a .yaml config file)")
    return PRESETS[name]()
