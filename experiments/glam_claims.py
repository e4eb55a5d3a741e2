"""GLaM's central claims in miniature, on a CPU: a dense model against MoE models of equal activated size.

    .venv/bin/python experiments/glam_claims.py --out runs/claims --data-root ../shared/data --scale small

What it runs (reference doc §3, §5–§7; paper §6 "more experts help at fixed compute"):

- one SentencePiece tokenizer, trained once on the six-genre mixture and passed to every run as
  ``data.tokenizer`` so that losses are comparable;
- the main sweep, every run on the same tokens of the real mixture (``shared_corpus_sources``, paper
  Table 3 weights): a dense model and GLaM models with E in {4, 8, 16, 32} experts. All MoE models
  have expert width F; the dense twin has 7F/6 (``presets.tiny_dense``), so every model activates
  the same parameters per token. Plus the largest E routed in one group per batch instead of one
  per sequence, to separate the effect of capacity drops from that of the experts;
- ablations around E = 8 (fewer tokens, the same for each): second-expert policy ``random``;
  capacity factor 1.0 and 1.25 (train and eval); the output z-loss at 1e-4; and the baseline again
  from another seed, to measure the run-to-run noise. Their baseline (policy ``all``, capacity 2.0,
  no z-loss) is the main sweep's E = 8 run read at the ablation's step: the Adafactor schedule
  1/sqrt(max(t, warmup)) does not depend on the run length, so that prefix is step for step the run
  a shorter job would have made;
- zero-shot rank classification (``glam.evals.evaluate``, ``--limit`` examples per task) of every
  main-sweep model on the tasks whose data is present.

Re-running continues a crashed sweep: a run whose ``summary.json`` says it reached its steps is
reused, a partial one resumes from its last checkpoint (``glam.train.loop.train``), and finished
evaluations are kept. Outputs: ``OUT/<run>/`` (metrics.jsonl, checkpoints, zeroshot.json),
``OUT/results.json`` (every number the report uses), ``OUT/report.md`` (tables) and PNG plots in
``--plots`` (default ``docs/results``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import dataclass

from glam.config import GLaMConfig, resolve

# --------------------------------------------------------------------------------------------
# The plan: scales and runs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """Sizes of one sweep. ``ffn_dim`` is the expert width F; the dense twin gets 7F/6."""

    steps: int  # main sweep, every model
    ablation_steps: int  # ablations (a multiple of eval_every and log_every)
    batch_size: int = 16
    seq_len: int = 128
    d_model: int = 128
    num_layers: int = 4
    num_heads: int = 4
    head_dim: int = 32
    ffn_dim: int = 768
    vocab_size: int = 4096
    experts: tuple[int, ...] = (4, 8, 16, 32)
    log_every: int = 10
    eval_every: int = 50
    eval_batches: int = 2
    heldout_docs: int = 32
    warmup_steps: int = 100
    tokenizer_docs: int = 20_000
    zeroshot_limit: int = 50
    tasks: tuple[str, ...] = (
        "arc_easy",
        "boolq",
        "cb",
        "copa",
        "hellaswag",
        "openbookqa",
        "piqa",
        "rte",
        "storycloze",
        "wic",
        "winogrande",
        "wsc",
        "anli_r1",
        "lambada",
    )

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


SCALES = {
    # The default, sized for about an hour on a 2-core CPU shared with other jobs: measured
    # ~1,900 tokens/s (dense) and ~1,600 (E=32) on a quiet machine, ~700-1,000 under load.
    "small": Scale(steps=200, ablation_steps=100),
    "full": Scale(steps=2000, ablation_steps=1000, zeroshot_limit=100),
    # Plumbing only (tests/test_experiments.py): a model of a few thousand parameters, 2 steps.
    "smoke": Scale(
        steps=2,
        ablation_steps=2,
        batch_size=8,
        seq_len=16,
        d_model=32,
        num_layers=2,
        num_heads=2,
        head_dim=16,
        ffn_dim=48,
        vocab_size=1024,
        experts=(4,),
        log_every=1,
        eval_every=2,
        eval_batches=1,
        heldout_docs=2,
        warmup_steps=2,
        tokenizer_docs=200,
        zeroshot_limit=2,
        tasks=("copa",),
    ),
}


@dataclass(frozen=True)
class RunSpec:
    """One training run: a name (its folder), its group, dotted overrides and its steps."""

    name: str
    group: str  # "main" or "ablation"
    overrides: tuple[str, ...]
    steps: int
    experts: int  # 0 = dense
    label: str


BASELINE = "glam-e8"  # the ablations' baseline: the main sweep's E = 8 run, read at ablation_steps


def plan_runs(scale: Scale) -> list[RunSpec]:
    """The main sweep (dense + one run per E) and the E = 8 ablations."""
    dense_ffn = scale.ffn_dim * 7 // 6  # equal activated parameters (presets.tiny_dense)
    runs = [RunSpec("dense", "main", ("moe.num_experts=0", f"model.ffn_dim={dense_ffn}"), scale.steps, 0, "dense")]
    runs += [
        RunSpec(f"glam-e{e}", "main", (f"moe.num_experts={e}",), scale.steps, e, f"GLaM E={e}") for e in scale.experts
    ]
    # the largest E again, routed in one group per batch instead of one per sequence (128 tokens):
    # are its drops, and its loss, a matter of small routing groups?
    e_max, batch_tokens = max(scale.experts), scale.batch_size * scale.seq_len
    runs.append(
        RunSpec(
            f"glam-e{e_max}-batchgroup",
            "main",
            (f"moe.num_experts={e_max}", f"moe.group_size={batch_tokens}"),
            scale.steps,
            e_max,
            f"GLaM E={e_max}, {batch_tokens}-token groups",
        )
    )
    e8 = ("moe.num_experts=8",)
    ablations = {
        "abl-random": (("moe.second_expert_policy=random",), "2nd expert: random"),
        "abl-cf1.0": (("moe.capacity_factor_train=1.0", "moe.capacity_factor_eval=1.0"), "capacity 1.0"),
        "abl-cf1.25": (("moe.capacity_factor_train=1.25", "moe.capacity_factor_eval=1.25"), "capacity 1.25"),
        "abl-zloss": (("train.z_loss_weight=1e-4",), "z-loss 1e-4"),
        # the baseline again from another initialisation: how far apart two identical runs land
        "abl-seed1": (("train.seed=1",), "baseline, seed 1 (noise)"),
    }
    runs += [
        RunSpec(name, "ablation", e8 + extra, scale.ablation_steps, 8, label)
        for name, (extra, label) in ablations.items()
    ]
    return runs


def base_config(scale: Scale, data_root: str, tokenizer: str) -> GLaMConfig:
    """The ``tiny`` preset at ``scale``'s sizes, on the shared corpus, with the sweep's tokenizer."""
    from glam.data.shared_corpus import shared_corpus_sources

    cfg = resolve(
        "tiny",
        [
            f"model.vocab_size={scale.vocab_size}",
            f"model.d_model={scale.d_model}",
            f"model.num_layers={scale.num_layers}",
            f"model.num_heads={scale.num_heads}",
            f"model.head_dim={scale.head_dim}",
            f"model.ffn_dim={scale.ffn_dim}",
            f"model.max_seq_len={max(256, scale.seq_len)}",
            f"train.batch_size={scale.batch_size}",
            f"train.seq_len={scale.seq_len}",
            f"train.log_every={scale.log_every}",
            f"train.eval_every={scale.eval_every}",
            f"train.eval_batches={scale.eval_batches}",
            f"optim.warmup_steps={scale.warmup_steps}",
            f"checkpoint.every={scale.eval_every * 2}",
            "checkpoint.keep=1",
            f"data.heldout_docs={scale.heldout_docs}",
            f"data.tokenizer_sample_docs={scale.tokenizer_docs}",
        ],
    )
    data = dataclasses.replace(cfg.data, sources=shared_corpus_sources(data_root), tokenizer=tokenizer)
    return dataclasses.replace(cfg, data=data)


def run_config(base: GLaMConfig, spec: RunSpec) -> GLaMConfig:
    from glam.config import apply_overrides

    cfg = apply_overrides(base, [*spec.overrides, f"train.steps={spec.steps}"])
    return dataclasses.replace(cfg, name=spec.name)


# --------------------------------------------------------------------------------------------
# Running: tokenizer, training (skip / resume), zero-shot evaluation
# --------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path: str, value) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)


def ensure_tokenizer(base: GLaMConfig, out: str) -> str:
    """Train the sweep's one tokenizer (once) on a weighted sample of the mixture; returns its path."""
    from glam.data.sources import iter_documents, open_sources
    from glam.data.tokenizer import train_tokenizer

    path = os.path.join(out, "tokenizer.model")
    if not os.path.isfile(path):
        start = time.perf_counter()
        sources = open_sources(base.data.sources, base.data.on_bad_json)
        docs = iter_documents(sources, base.data.tokenizer_sample_docs, seed=base.data.seed)
        train_tokenizer(docs, base.model.vocab_size, path)
        log(f"tokenizer: {path} ({time.perf_counter() - start:.0f}s)")
    return os.path.abspath(path)


def train_run(cfg: GLaMConfig, run_dir: str) -> dict:
    """Train (or resume, or reuse) one run; its ``summary.json`` accumulates the wall time it took."""
    from glam.train.loop import train

    summary_path = os.path.join(run_dir, "summary.json")
    done = read_json(summary_path)
    if done and done.get("step") == cfg.train.steps:
        log(f"{cfg.name}: finished earlier ({done['step']} steps), reused")
        return done
    log(f"{cfg.name}: training {cfg.train.steps} steps")
    start = time.perf_counter()
    result = train(cfg, run_dir)
    seconds = time.perf_counter() - start
    summary = {
        "step": result["step"],
        "loss": result["loss"],
        "heldout": result["heldout"],
        "compile_seconds": result["compile_seconds"],
        "skipped_steps": result["skipped_steps"],
        "wall_seconds": seconds + (done or {}).get("wall_seconds", 0.0),
    }
    write_json(summary_path, summary)
    log(f"{cfg.name}: held-out mean {result['heldout'].get('heldout/mean', float('nan')):.4f} in {seconds:.0f}s")
    return summary


def zeroshot_run(run_dir: str, scale: Scale, task_root: str) -> dict | None:
    """Zero-shot accuracy of a run's final checkpoint on the tasks whose data is present (cached)."""
    from glam.evals import evaluate
    from glam.evals.tasks import has_data, load_task
    from glam.inference import load_language_model

    path = os.path.join(run_dir, "zeroshot.json")
    cached = read_json(path)
    if cached is not None:
        return cached
    tasks = [t for t in scale.tasks if has_data(load_task(t), task_root)]
    if not tasks:
        return None
    start = time.perf_counter()
    model = load_language_model(run_dir, batch_size=32)
    results = evaluate(model, tasks, shots=0, limit=scale.zeroshot_limit, data_root=task_root)
    slim = {
        "tasks": {n: {k: r[k] for k in ("value", "n", "metric", "category")} for n, r in results["tasks"].items()},
        "averages": results["averages"],
        "seconds": time.perf_counter() - start,
    }
    write_json(path, slim)
    log(f"{os.path.basename(run_dir)}: zero-shot mean {slim['averages']['all']['value']:.3f} ({slim['seconds']:.0f}s)")
    return slim


def chance_levels(scale: Scale, task_root: str) -> dict[str, float]:
    """Expected accuracy of a uniform random guess on the examples evaluated (0 for LAMBADA)."""
    from glam.evals.tasks import has_data, load_data, load_task

    out = {}
    for name in scale.tasks:
        task = load_task(name)
        if not has_data(task, task_root):
            continue
        examples = load_data(task, task_root, scale.zeroshot_limit).examples
        if task.output == "multiple_choice" and examples:
            out[name] = sum(len(ex.gold) / len(ex.requests) for ex in examples) / len(examples)
        else:
            out[name] = 0.0
    return out


# --------------------------------------------------------------------------------------------
# Collecting the numbers
# --------------------------------------------------------------------------------------------


def read_records(run_dir: str) -> list[dict]:
    """metrics.jsonl, one record per (kind, step): a resumed run re-logs the steps after its checkpoint."""
    from glam.train.metrics import read_metrics

    unique = {(r["kind"], r["step"]): r for r in read_metrics(run_dir)}
    return [unique[k] for k in sorted(unique, key=lambda k: (k[1], k[0]))]


def layer_mean(record: dict, name: str) -> float | None:
    values = [v for k, v in record.items() if k.startswith(f"moe/{name}/")]
    return sum(values) / len(values) if values else None


def collect(run_dir: str, steps: int, tokens_per_step: int) -> dict:
    """Every number the report needs from one run, up to ``steps`` (a prefix for the ablation baseline)."""
    records = [r for r in read_records(run_dir) if r["step"] <= steps]
    evals = [r for r in records if r["kind"] == "eval"]
    trains = [r for r in records if r["kind"] == "train"]
    final = next((r for r in evals if r["step"] == steps), None)
    out = {
        "finished": final is not None,
        "curve": [(r["step"] * tokens_per_step, r["heldout/mean"]) for r in evals],
        "train_curve": [(r["step"] * tokens_per_step, r["ce_loss"]) for r in trains],
        "heldout": {k.removeprefix("heldout/"): v for k, v in (final or {}).items() if k.startswith("heldout/")},
        "train_loss": trains[-1]["ce_loss"] if trains else None,
        "tokens": steps * tokens_per_step,
        "tokens_per_sec": sorted(r["tokens_per_sec"] for r in trains)[len(trains) // 2] if trains else None,
        "expert_load": [(r["step"], r["expert_load"]) for r in trains if "expert_load" in r],
    }
    for stat in ("dropped_first", "dropped_second", "load_max_over_mean", "gate_entropy"):
        values = [v for v in (layer_mean(r, stat) for r in trains) if v is not None]
        out[stat] = sum(values) / len(values) if values else None
    z = [r["z_loss"] for r in trains if "z_loss" in r]
    out["z_loss"] = z[-1] if z else None
    return out


def collect_all(out: str, scale: Scale, runs: list[RunSpec]) -> dict:
    results: dict = {"main": {}, "ablation": {}}
    for spec in runs:
        run_dir = os.path.join(out, spec.name)
        entry = collect(run_dir, spec.steps, scale.tokens_per_step)
        entry.update(label=spec.label, experts=spec.experts, steps=spec.steps)
        entry["summary"] = read_json(os.path.join(run_dir, "summary.json"))
        entry["zeroshot"] = read_json(os.path.join(run_dir, "zeroshot.json"))
        results[spec.group][spec.name] = entry
    if BASELINE in results["main"]:
        base = collect(os.path.join(out, BASELINE), scale.ablation_steps, scale.tokens_per_step)
        base.update(label="baseline (E=8, all, capacity 2.0)", experts=8, steps=scale.ablation_steps)
        results["ablation"] = {"abl-baseline": base, **results["ablation"]}
    return results


# --------------------------------------------------------------------------------------------
# Report: plots and markdown tables
# --------------------------------------------------------------------------------------------


def plot_all(results: dict, plots: str) -> list[str]:
    """The PNGs of the report; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    os.makedirs(plots, exist_ok=True)
    paths = []

    def save(fig, name):
        path = os.path.join(plots, name)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    for group, title in (("main", "dense vs GLaM (equal activated parameters)"), ("ablation", "E=8 ablations")):
        fig, (ax, ax_train) = plt.subplots(1, 2, figsize=(11, 4))
        for entry in results[group].values():
            for axis, key, marker, start in ((ax, "curve", "o", 0), (ax_train, "train_curve", None, 0.1)):
                points = [(t, v) for t, v in entry[key] if t > start * entry["tokens"]]  # skip the first 10%
                if points:
                    x, y = zip(*points)
                    axis.plot(np.array(x) / 1e6, y, marker=marker, label=entry["label"])
        ax.set(xlabel="training tokens (M)", ylabel="held-out loss (mean over sources)", title=title)
        ax_train.set(xlabel="training tokens (M)", ylabel="training cross-entropy", title="training loss")
        for axis in (ax, ax_train):
            axis.grid(alpha=0.3)
            if axis.lines:
                axis.legend()
        save(fig, f"heldout_{group}.png")

    main = [e for e in results["main"].values() if e["finished"]]
    moe = sorted((e for e in main if e["experts"] and "groups" not in e["label"]), key=lambda e: e["experts"])
    grouped = [e for e in main if "groups" in e["label"]]
    dense = next((e for e in main if not e["experts"]), None)
    if moe:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([e["experts"] for e in moe], [e["heldout"]["mean"] for e in moe], "o-", label="GLaM")
        for e in grouped:
            ax.plot([e["experts"]], [e["heldout"]["mean"]], "*", ms=12, label=e["label"])
        if dense:
            ax.axhline(dense["heldout"]["mean"], color="k", ls="--", label="dense (same activated params)")
        ax.set_xscale("log", base=2)
        ax.set(xlabel="experts per MoE layer (E)", ylabel="final held-out loss", title="final loss against E")
        ax.grid(alpha=0.3)
        ax.legend()
        save(fig, "loss_vs_experts.png")

    loads = [e for e in results["main"].values() if e["expert_load"]]
    if loads:
        layers = len(loads[0]["expert_load"][0][1])
        fig, axes = plt.subplots(
            len(loads), layers, figsize=(5 * layers, 2.4 * len(loads)), squeeze=False, layout="constrained"
        )
        for row, entry in zip(axes, loads):
            steps = [s for s, _ in entry["expert_load"]]
            load = np.array([lo for _, lo in entry["expert_load"]])  # [time, P, E]
            for p, ax in enumerate(row):
                im = ax.imshow(
                    load[:, p, :].T * load.shape[-1], aspect="auto", cmap="RdBu_r", vmin=0, vmax=2,
                    extent=(steps[0], steps[-1], load.shape[-1] - 0.5, -0.5),
                )  # fmt: skip
                ax.set(title=f"{entry['label']}, MoE layer {p}", ylabel="expert")
        fig.supxlabel("training step")
        fig.colorbar(im, ax=axes, shrink=0.6, label="kept assignments / uniform share")
        fig.savefig(os.path.join(plots, "expert_load.png"), dpi=110)
        plt.close(fig)
        paths.append(os.path.join(plots, "expert_load.png"))

    capacity = {"abl-cf1.0": "capacity 1.0", "abl-cf1.25": "capacity 1.25", "abl-baseline": "capacity 2.0"}
    cf = [(label, results["ablation"][n]) for n, label in capacity.items() if n in results["ablation"]]
    cf = [(label, e) for label, e in cf if e["dropped_first"] is not None]
    if cf:
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        names = [label for label, _ in cf]
        x = np.arange(len(cf))
        ax.bar(x - 0.2, [100 * e["dropped_first"] for _, e in cf], 0.4, label="1st choices dropped")
        ax.bar(x + 0.2, [100 * e["dropped_second"] for _, e in cf], 0.4, label="2nd choices dropped")
        ax.set_xticks(x, names)
        ax.set(ylabel="% of assignments (training mean)", title="capacity factor: drop rates (E=8)")
        ax.legend()
        save(fig, "drop_rates.png")
    return paths


def fmt(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def markdown_tables(results: dict, scale: Scale) -> str:
    """The report's tables (markdown), from ``collect_all``'s numbers."""
    lines = []
    main = results["main"]
    sources = sorted({s for e in main.values() for s in e["heldout"] if s != "mean"})
    lines += [
        f"### Held-out loss after {scale.steps * scale.tokens_per_step / 1e6:.2f}M tokens (main sweep)",
        "",
        "| model | " + " | ".join(["mean", *sources]) + " | train CE (last window) | tokens/s (median) |",
        "|---|" + "---|" * (len(sources) + 3),
    ]
    for entry in main.values():
        h = entry["heldout"]
        cells = [fmt(h.get("mean"))] + [fmt(h.get(s), 3) for s in sources]
        lines.append(
            f"| {entry['label']} | "
            + " | ".join(cells)
            + f" | {fmt(entry['train_loss'])} | {fmt(entry['tokens_per_sec'], 0)} |"
        )
    lines += ["", "### Routing statistics (main sweep; means over training and over MoE layers)", ""]
    lines += [
        "| model | 1st choices dropped | 2nd choices dropped | max load / mean load | gate entropy |",
        "|---|---|---|---|---|",
    ]
    for entry in main.values():
        if entry["experts"]:
            lines.append(
                f"| {entry['label']} | {pct(entry['dropped_first'])} | {pct(entry['dropped_second'])} "
                f"| {fmt(entry['load_max_over_mean'], 2)} | {fmt(entry['gate_entropy'], 3)} |"
            )
    abl = results["ablation"]
    lines += [
        "",
        f"### Ablations (E=8, {scale.ablation_steps * scale.tokens_per_step / 1e6:.2f}M tokens each)",
        "",
        "| run | held-out mean | train CE (last window) | 1st dropped | 2nd dropped | max/mean load "
        "| mean (log Z)² (last window) |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in abl.values():
        df, ds = entry["dropped_first"], entry["dropped_second"]
        lines.append(
            f"| {entry['label']} | {fmt(entry['heldout'].get('mean'))} | {fmt(entry['train_loss'])} "
            f"| {pct(df)} | {pct(ds)} | {fmt(entry['load_max_over_mean'], 2)} "
            f"| {fmt(entry['z_loss'], 2)} |"
        )
    scored = [e for e in main.values() if e["zeroshot"]]
    if scored:
        tasks = sorted({t for e in scored for t in e["zeroshot"]["tasks"]})
        n = {t: next(e["zeroshot"]["tasks"][t]["n"] for e in scored if t in e["zeroshot"]["tasks"]) for t in tasks}
        lines += [
            "",
            "### Zero-shot accuracy (%; rank classification; LAMBADA: greedy accuracy)",
            "",
            "| model | average | " + " | ".join(f"{t} (n={n[t]})" for t in tasks) + " |",
            "|---|---|" + "---|" * len(tasks),
        ]
        chance = results.get("chance", {})
        if all(t in chance for t in tasks):
            average = sum(chance.values()) / len(chance)
            cells = [fmt(100 * chance[t], 1) for t in tasks]
            lines.append(f"| uniform random guess | {fmt(100 * average, 1)} | " + " | ".join(cells) + " |")
        for entry in scored:
            z = entry["zeroshot"]
            cells = [fmt(100 * z["tasks"][t]["value"], 1) if t in z["tasks"] else "–" for t in tasks]
            lines.append(
                f"| {entry['label']} | {fmt(100 * z['averages']['all']['value'], 1)} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines) + "\n"


def environment() -> dict:
    import jax

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.platform(),
    }


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def write_report(out: str, scale: Scale, runs: list[RunSpec], plots: str, task_root: str | None = None) -> dict:
    """results.json, report.md and the plots from whatever the runs have written so far."""
    results = collect_all(out, scale, runs)
    results.update(
        chance=chance_levels(scale, task_root) if task_root and os.path.isdir(task_root) else {},
        scale=dataclasses.asdict(scale),
        environment=environment(),
        sweep=read_json(os.path.join(out, "sweep.json")),
    )
    write_json(os.path.join(out, "results.json"), results)
    plot_all(results, plots)
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write(markdown_tables(results, scale))
    return results


def run_sweep(out: str, data_root: str, scale: Scale, plots: str, only: list[str] | None = None) -> dict:
    """Tokenizer → main sweep → its zero-shot scores → ablations → results.json, report.md, plots."""
    start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    runs = [r for r in plan_runs(scale) if not only or r.name in only]
    base = base_config(scale, data_root, tokenizer="")
    base = dataclasses.replace(base, data=dataclasses.replace(base.data, tokenizer=ensure_tokenizer(base, out)))
    configs = {spec.name: run_config(base, spec) for spec in runs}  # validate every config up front
    task_root = os.path.join(data_root, "tasks")
    for group in ("main", "ablation"):  # the headline first, in case the time runs out
        for spec in (r for r in runs if r.group == group):
            train_run(configs[spec.name], os.path.join(out, spec.name))
        for spec in (r for r in runs if r.group == group == "main"):
            if not any(o.startswith("moe.group_size=") for o in spec.overrides):  # needs B·S % group = 0
                zeroshot_run(os.path.join(out, spec.name), scale, task_root)
    sweep = read_json(os.path.join(out, "sweep.json")) or {"invocations": []}
    sweep["invocations"].append({"seconds": time.perf_counter() - start, "argv": sys.argv, "finished": time.ctime()})
    write_json(os.path.join(out, "sweep.json"), sweep)
    results = write_report(out, scale, runs, plots, task_root)
    log(f"done in {time.perf_counter() - start:.0f}s: {out}/report.md, {out}/results.json, plots in {plots}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/claims", help="sweep folder (one run directory per model)")
    parser.add_argument("--data-root", default="../shared/data", help="folder holding corpus/ and tasks/")
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--plots", default="docs/results", help="where the PNG plots go")
    parser.add_argument("--only", default="", help="comma-separated run names (default: all)")
    parser.add_argument("--report-only", action="store_true", help="train nothing; report what --out holds")
    args = parser.parse_args(argv)
    only = [s for s in args.only.split(",") if s] or None
    scale = SCALES[args.scale]
    if args.report_only:
        runs = [r for r in plan_runs(scale) if not only or r.name in only]
        write_report(args.out, scale, runs, args.plots, os.path.join(args.data_root, "tasks"))
    else:
        run_sweep(args.out, args.data_root, scale, args.plots, only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
