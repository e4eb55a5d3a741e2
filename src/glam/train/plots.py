"""The plots of a run, from ``RUN/metrics.jsonl``, as PNGs in ``RUN/plots/`` (``glam plot``, ``glam demo``).

- ``loss.png``: training loss per log step, and the held-out loss of every source.
- ``expert_load.png``: one panel per MoE layer, experts × log steps, colour = the expert's share of
  the kept assignments (1/E everywhere is a perfectly balanced layer).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from glam.errors import GLaMError
from glam.train.metrics import load_metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(records: list[dict], path: str) -> None:
    plt = _pyplot()
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(8, 5))
    losses = [np.nan if r.get("loss") is None else r["loss"] for r in train]  # null: a non-finite loss
    ax.plot([r["step"] for r in train], losses, color="black", lw=1.5, label="train loss")
    sources = sorted({k for r in evals for k in r if k.startswith("heldout/") and k != "heldout/mean"})
    for key in sources:
        points = [(r["step"], np.nan if r[key] is None else r[key]) for r in evals if key in r]
        ax.plot(*zip(*points), marker="o", ms=3, lw=1, label=f"held-out {key.split('/', 1)[1]}")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title="GLaM training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_expert_load(records: list[dict], path: str) -> bool:
    """Heat map of ``expert_load`` [P, E] over log steps; False when the run has no MoE layers."""
    rows = [r for r in records if r.get("kind") == "train" and r.get("expert_load")]
    if not rows:
        return False
    plt = _pyplot()
    load = np.asarray([r["expert_load"] for r in rows])  # [steps, P, E]
    steps = [r["step"] for r in rows]
    P, E = load.shape[1], load.shape[2]
    fig, axes = plt.subplots(P, 1, figsize=(8, 1.6 + 1.4 * P), squeeze=False, sharex=True)
    for i, ax in enumerate(axes[:, 0]):
        image = ax.imshow(
            load[:, i, :].T,
            aspect="auto",
            origin="lower",
            cmap="viridis",
            vmin=0.0,
            vmax=max(2.0 / E, float(load.max())),
            extent=(steps[0], steps[-1], -0.5, E - 0.5),
        )
        ax.set_ylabel(f"MoE layer {i}\nexpert")
    axes[-1, 0].set_xlabel("step")
    fig.colorbar(image, ax=axes[:, 0].tolist(), label=f"share of assignments (balanced = {1 / E:.3f})")
    fig.suptitle("Expert load per MoE layer")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_run(run_dir: str, log: Callable[[str], None] | None = None) -> list[str]:
    """Write the plots of ``run_dir`` into ``run_dir/plots``; returns their paths. Lines of
    ``metrics.jsonl`` that are not JSON records are skipped, with a note passed to ``log``."""
    records, skipped = load_metrics(run_dir)
    if skipped and log is not None:
        log(f"note: skipped {skipped} damaged line{'s' * (skipped > 1)} of {run_dir}/metrics.jsonl")
    if not records:
        raise GLaMError(f"{run_dir!r} has no metrics.jsonl records; train first (`glam train --run-dir {run_dir}`)")
    folder = os.path.join(run_dir, "plots")
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, "loss.png")]
    plot_losses(records, paths[0])
    heat = os.path.join(folder, "expert_load.png")
    if plot_expert_load(records, heat):
        paths.append(heat)
    return paths
