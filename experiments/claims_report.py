"""The numbers, verdicts, tables and plots of ``glam_claims.py``'s sweep, from what its runs wrote.

``write_report(out, scale, specs, plots, data_root)`` reads every run's ``metrics.jsonl``,
``summary.json`` and ``heldout_rows.json`` and writes ``OUT/claims.json`` (machine-readable: runs,
verdict, noise, data epochs), ``OUT/report.md`` (tables) and the PNG plots. Runs that have not
finished are left out of the verdict and shown as missing.

Noise is measured two ways:

- **seed spread**: max - min of the final held-out mean over a configuration's seeds (``train.seed``:
  initialisation and routing RNG; data order fixed). The verdict rule uses it.
- **evaluation noise**: a bootstrap over the held-out rows (each source resampled with replacement,
  then the mean over sources), the standard error of one model's held-out mean and, pairing the same
  rows, of the gap between two models.
"""

from __future__ import annotations

import os
import platform

import numpy as np
from sweep_common import base_config, read_json, write_json

VERDICT_RULE = (
    "An effect counts where the gap in final held-out mean loss exceeds 2x the larger seed spread "
    "(max - min over seeds) of the two configurations compared; a one-seed configuration is given the "
    "largest spread measured at its size. Fixed before the sweep ran."
)

#: (name, size: 0 = the main size, 1 = the second, baseline A, candidate B, question).
#: gap = loss(A) - loss(B): > 0 means B is lower.
COMPARISONS = [
    ("claim1_e8_vs_dense", 0, "dense", "e8", "GLaM E=8 vs the dense twin at equal activated parameters"),
    ("sparsity_e8_vs_form_matched", 0, "e2", "e8", "sparsity alone: E=8 vs E=2 (same FFN form, dense)"),
    ("ffn_form_e2_vs_dense", 0, "dense", "e2", "FFN form alone: non-gated experts (E=2) vs gated twin"),
    ("gated_experts_vs_dense", 0, "dense", "e8-geglu", "gated-GELU experts (E=8) vs the gated dense twin"),
    ("ceiling_dense_total_vs_e8", 0, "e8", "dense-total", "dense at E=8's total parameters vs E=8"),
    ("claim1_e4_vs_dense", 0, "dense", "e4", "E=4 vs dense"),
    ("claim1_e16_vs_dense", 0, "dense", "e16", "E=16 vs dense"),
    ("claim1_e32_vs_dense", 0, "dense", "e32", "E=32 vs dense"),
    ("claim1_e64_vs_dense", 0, "dense", "e64", "E=64 vs dense"),
    ("claim2_e32_vs_e8", 0, "e8", "e32", "more experts: E=32 vs E=8"),
    ("claim2_e64_vs_e4", 0, "e4", "e64", "more experts: E=64 vs E=4"),
    ("small_e8_vs_dense", 1, "dense", "e8", "second size: E=8 vs dense"),
    ("small_e8_vs_form_matched", 1, "e2", "e8", "second size: E=8 vs E=2"),
    ("small_ffn_form_e2_vs_dense", 1, "dense", "e2", "second size: E=2 vs dense"),
]
#: does a gap move with scale? (name, comparison at the main size, the same at the second size)
SCALE_COMPARISONS = [
    ("scale_e8_vs_dense", "claim1_e8_vs_dense", "small_e8_vs_dense"),
    ("scale_e8_vs_form_matched", "sparsity_e8_vs_form_matched", "small_e8_vs_form_matched"),
]


# --------------------------------------------------------------------------------------------
# One run's numbers
# --------------------------------------------------------------------------------------------


def read_records(run_dir: str) -> list[dict]:
    """metrics.jsonl, one record per (kind, step): a resumed run re-logs the steps after its checkpoint."""
    from glam.train.metrics import read_metrics

    unique = {(r["kind"], r["step"]): r for r in read_metrics(run_dir)}
    return [unique[k] for k in sorted(unique, key=lambda k: (k[1], k[0]))]


def _layer_mean(record: dict, name: str) -> float | None:
    values = [v for k, v in record.items() if k.startswith(f"moe/{name}/")]
    return float(np.mean(values)) if values else None


def _tokens_at(step: int, log_steps: list[int], trained_by: np.ndarray) -> int:
    """Target tokens trained on by ``step`` (a log step, or 0)."""
    return int(trained_by[log_steps.index(step)]) if step else 0


def collect_run(out: str, spec, steps: int, tokens_per_step: int) -> dict:
    """Sizes, curves, final held-out losses and routing statistics of one run."""
    from glam.checkpoint.manager import read_config
    from glam.model.flops import model_size

    run_dir = os.path.join(out, spec.name)
    entry = {
        "name": spec.name,
        "size": spec.size,
        "config": spec.config,
        "experts": spec.experts,
        "seed": spec.seed,
        "control": spec.control,
        "label": spec.label,
        "finished": False,
    }
    summary = read_json(os.path.join(run_dir, "summary.json"))
    if not summary or summary.get("step") != steps:
        return entry
    size = model_size(read_config(run_dir))
    records = read_records(run_dir)
    evals = [r for r in records if r["kind"] == "eval"]
    trains = [r for r in records if r["kind"] == "train"]
    final = next(r for r in evals if r["step"] == steps)
    nonemb = size.params_activated - size.params_embedding
    tokens = int(sum(r["target_tokens"] for r in trains))  # non-padding targets trained on
    trained_by = np.cumsum([r["target_tokens"] for r in trains])
    log_steps = [r["step"] for r in trains]
    entry.update(
        finished=True,
        activated_nonembedding_params=nonemb,
        activated_params=size.params_activated,
        total_params=size.params_total,
        embedding_params=size.params_embedding,
        train_tokens=tokens,
        tokens_per_activated_nonembedding_param=tokens / nonemb,
        flops_per_token_train=size.flops_per_token_train,
        train_flops=size.flops_per_token_train * tokens,
        final_heldout_mean=final["heldout/mean"],
        final_heldout={k.removeprefix("heldout/"): v for k, v in final.items() if k.startswith("heldout/")},
        train_slots=steps * tokens_per_step,  # batch x length x steps, padding included
        curve=[[_tokens_at(r["step"], log_steps, trained_by), r["heldout/mean"]] for r in evals],
        train_ce_last=trains[-1]["ce_loss"],
        tokens_per_sec_median=float(np.median([r["tokens_per_sec"] for r in trains if r["step"] > trains[0]["step"]])),
        threads=summary.get("threads"),
        wall_seconds=summary["wall_seconds"],
        skipped_steps=summary["skipped_steps"],
    )
    if spec.experts:
        for stat in ("dropped_first", "dropped_second", "load_max_over_mean", "gate_entropy"):
            values = [v for v in (_layer_mean(r, stat) for r in trains) if v is not None]
            entry[f"{stat}_mean"] = float(np.mean(values))
            entry[f"{stat}_last"] = values[-1]
    rows = read_json(os.path.join(run_dir, "heldout_rows.json"))
    entry["_rows"] = {k: np.asarray(v, np.float64).reshape(-1, 2) for k, v in rows.items()}
    from_rows = float(np.mean([t[:, 0].sum() / t[:, 1].sum() for t in entry["_rows"].values()]))
    entry["heldout_mean_from_rows"] = from_rows  # equals final_heldout_mean: the same rows, re-scored
    return entry


# --------------------------------------------------------------------------------------------
# Noise and verdicts
# --------------------------------------------------------------------------------------------


def group(entries: list[dict]) -> dict[str, dict]:
    """Finished runs by configuration key (``size-config``): seeds, mean, spread, mean per-row table."""
    groups: dict[str, dict] = {}
    for e in entries:
        if e["finished"]:
            groups.setdefault(f"{e['size']}-{e['config']}", {"runs": []})["runs"].append(e)
    for g in groups.values():
        finals = [r["final_heldout_mean"] for r in g["runs"]]
        g.update(
            seeds=len(finals),
            values=finals,
            mean=float(np.mean(finals)),
            spread=float(max(finals) - min(finals)) if len(finals) > 1 else None,
            rows={s: np.mean([r["_rows"][s] for r in g["runs"]], axis=0) for s in g["runs"][0]["_rows"]},
        )
    return groups


def _mean_over_sources(rows: dict[str, np.ndarray], picks: dict[str, np.ndarray] | None = None) -> np.ndarray:
    means = []
    for source, table in rows.items():
        t = table if picks is None else table[picks[source]]  # [n, 2] or [R, n, 2]
        means.append(t[..., 0].sum(-1) / t[..., 1].sum(-1))
    return np.mean(means, axis=0)


def bootstrap_se(a: dict[str, np.ndarray], b: dict[str, np.ndarray] | None = None, n: int = 2000) -> float:
    """Bootstrap standard error of the held-out mean of ``a``, or of the paired gap a - b (same rows)."""
    rng = np.random.default_rng(0)
    picks = {s: rng.integers(0, len(t), (n, len(t))) for s, t in a.items()}
    values = _mean_over_sources(a, picks)
    if b is not None:
        values = values - _mean_over_sources(b, picks)
    return float(np.std(values))


def size_spread(groups: dict, size: str) -> float | None:
    spreads = [g["spread"] for k, g in groups.items() if k.startswith(f"{size}-") and g["spread"] is not None]
    return max(spreads) if spreads else None


def compare(groups: dict, size: str, a: str, b: str, question: str) -> dict | None:
    ga, gb = groups.get(f"{size}-{a}"), groups.get(f"{size}-{b}")
    if not ga or not gb:
        return None
    borrowed = size_spread(groups, size)
    spread_a = ga["spread"] if ga["spread"] is not None else borrowed
    spread_b = gb["spread"] if gb["spread"] is not None else borrowed
    if spread_a is None or spread_b is None:
        return None
    gap = ga["mean"] - gb["mean"]
    threshold = 2 * max(spread_a, spread_b)
    counts = abs(gap) > threshold
    if counts:
        finding = f"{b} lower by {gap:.4f}" if gap > 0 else f"{a} lower by {-gap:.4f}"
    else:
        finding = f"no effect: |gap| {abs(gap):.4f} <= {threshold:.4f}"
    return {
        "question": question,
        "size": size,
        "a": a,
        "b": b,
        "seeds_a": ga["seeds"],
        "seeds_b": gb["seeds"],
        "mean_a": ga["mean"],
        "mean_b": gb["mean"],
        "gap_a_minus_b": gap,
        "spread_a": spread_a,
        "spread_b": spread_b,
        "spread_borrowed": ga["spread"] is None or gb["spread"] is None,
        "threshold": threshold,
        "eval_se_of_gap": bootstrap_se(ga["rows"], gb["rows"]),
        "counts": bool(counts),
        "finding": finding,
    }


def verdicts(groups: dict, sizes: list[str]) -> dict:
    out = {}
    for name, role, a, b, question in COMPARISONS:
        result = compare(groups, sizes[role], a, b, question) if role < len(sizes) else None
        if result:
            out[name] = result
    for name, big, small in SCALE_COMPARISONS:
        if big in out and small in out:
            moved = out[big]["gap_a_minus_b"] - out[small]["gap_a_minus_b"]
            threshold = out[big]["threshold"] + out[small]["threshold"]
            out[name] = {
                "question": f"does the gap of {big} move from the second size to the main size?",
                "gap_main": out[big]["gap_a_minus_b"],
                "gap_second": out[small]["gap_a_minus_b"],
                "moved": moved,
                "threshold": threshold,
                "counts": bool(abs(moved) > threshold),
                "finding": (
                    f"moved by {moved:+.4f}" if abs(moved) > threshold else f"no change beyond {threshold:.4f}"
                ),
            }
    return out


def noise_summary(groups: dict) -> dict:
    out = {"seed_spread": {k: g["spread"] for k, g in groups.items() if g["spread"] is not None}}
    out["eval_se_of_one_mean"] = {k: bootstrap_se(g["runs"][0]["_rows"]) for k, g in groups.items()}
    seeds = {k: g for k, g in groups.items() if g["seeds"] > 1}
    if seeds:  # two seeds of one configuration, scored on the same rows: eval noise vs seed noise
        k, g = next(iter(seeds.items()))
        out["eval_se_of_seed0_minus_seed1"] = {k: bootstrap_se(g["runs"][0]["_rows"], g["runs"][1]["_rows"])}
    return out


# --------------------------------------------------------------------------------------------
# Data: tokens and epochs per source, replayed from the pipeline
# --------------------------------------------------------------------------------------------


def data_stats(out: str, scale, size, data_root: str) -> dict | None:
    """Per source: weight, documents, held-out documents and tokens drawn / epochs after the size's
    steps, from a replay of the data pipeline (cached in ``OUT/data-<size>.json``)."""
    path = os.path.join(out, f"data-{size.name}.json")
    cached = read_json(path)
    if cached is not None:
        return cached
    tokenizer = os.path.join(out, "tokenizer.model")
    if not os.path.isfile(tokenizer) or not os.path.isdir(data_root):
        return None
    from glam.data.pipeline import DataPipeline
    from glam.data.tokenizer import Tokenizer

    cfg = base_config(scale, size, data_root, tokenizer)
    pipeline = DataPipeline(cfg, Tokenizer(tokenizer), prefetch=0)
    heldout_tokens = {  # what the evaluations score
        s.name: int(sum(b["loss_weights"].sum() for b in pipeline.heldout_batches(s.name, scale.eval_batches)))
        for s in pipeline.sources
    }
    for _ in range(size.steps):
        pipeline.next_batch()
    stats = pipeline.stats()
    pipeline.close()
    for name, s in stats.items():
        s["heldout_tokens"] = heldout_tokens[name]
    write_json(path, stats)
    return stats


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------

COLORS = {
    "dense": "k",
    "dense-total": "0.55",
    "e2": "tab:brown",
    "e4": "tab:blue",
    "e8": "tab:orange",
    "e16": "tab:green",
    "e32": "tab:red",
    "e64": "tab:purple",
    "e8-geglu": "tab:pink",
}


def _curves(groups: dict, size: str) -> list[tuple[str, dict, np.ndarray, np.ndarray]]:
    """(config, group, x tokens [T], y [seeds, T]) for every configuration of a size."""
    out = []
    for key, g in groups.items():
        if key.startswith(f"{size}-"):
            x = np.array([t for t, _ in g["runs"][0]["curve"]], float)
            y = np.array([[v for _, v in r["curve"]] for r in g["runs"]])
            out.append((key.removeprefix(f"{size}-"), g, x, y))
    return out


def plot_all(groups: dict, scale, plots: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(plots, exist_ok=True)
    paths = []

    def save(fig, name):
        path = os.path.join(plots, name)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    sizes = [s.name for s in scale.sizes]
    for xname, fname in (("tokens", "heldout_vs_tokens.png"), ("flops", "heldout_vs_flops.png")):
        fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4.5), squeeze=False)
        for ax, size in zip(axes[0], sizes):
            for config, g, x, y in _curves(groups, size):
                keep = x >= 0.2 * x[-1]  # the first fifth falls from ~7.6 nats and hides the differences
                xs = x[keep] / 1e6 if xname == "tokens" else x[keep] * g["runs"][0]["flops_per_token_train"] / 1e12
                label = f"{g['runs'][0]['label']} ({g['seeds']} seed{'s' if g['seeds'] > 1 else ''})"
                color = COLORS.get(config)
                ax.plot(xs, y.mean(0)[keep], marker="o", ms=3, color=color, label=label)
                if g["seeds"] > 1:
                    ax.fill_between(xs, y.min(0)[keep], y.max(0)[keep], color=color, alpha=0.2, lw=0)
            xlabel = "training tokens (M)" if xname == "tokens" else "training FLOPs (TFLOP, 6N + attention)"
            ax.set(xlabel=xlabel, ylabel="held-out loss (mean over 9 sources)", title=f"{size}: band = seed min-max")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
        save(fig, fname)

    main = sizes[0]
    moe = sorted(
        ((g["runs"][0]["experts"], g) for k, g in groups.items() if k.startswith(f"{main}-e") and "geglu" not in k),
        key=lambda t: t[0],
    )
    if moe:
        fig, ax = plt.subplots(figsize=(6, 4))
        es = [e for e, _ in moe]
        means = [g["mean"] for _, g in moe]
        lo = [g["mean"] - min(g["values"]) for _, g in moe]
        hi = [max(g["values"]) - g["mean"] for _, g in moe]
        ax.errorbar(es, means, yerr=[lo, hi], fmt="o-", capsize=3, label="GLaM (E=2: form-matched dense control)")
        for config, style in (("dense", "--"), ("dense-total", ":")):
            g = groups.get(f"{main}-{config}")
            if g:
                ax.axhline(g["mean"], color="k", ls=style, label=g["runs"][0]["label"])
                if g["seeds"] > 1:
                    ax.axhspan(min(g["values"]), max(g["values"]), color="k", alpha=0.1)
        g = groups.get(f"{main}-e8-geglu")
        if g:
            ax.plot([8], [g["mean"]], "*", ms=12, color=COLORS["e8-geglu"], label=g["runs"][0]["label"])
        ax.set_xscale("log", base=2)
        ax.set(xlabel="experts per MoE layer (E)", ylabel="final held-out loss", title=f"{main}: final loss against E")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, "loss_vs_experts.png")

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for stat, label in (("dropped_first_mean", "1st choices dropped"), ("dropped_second_mean", "2nd dropped")):
            ax.plot(es, [100 * np.mean([r[stat] for r in g["runs"]]) for _, g in moe], "o-", label=label)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="experts (E)", ylabel="% of assignments (training mean)", title=f"{main}: capacity drops")
        ax.grid(alpha=0.3)
        ax.legend()
        save(fig, "drops_vs_experts.png")
    return paths


# --------------------------------------------------------------------------------------------
# Tables and the summary files
# --------------------------------------------------------------------------------------------


def fmt(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(entries: list[dict], groups: dict, verdict: dict, noise: dict, data: dict) -> str:
    lines = ["### Runs (final held-out mean, nats/token, over the 9 sources)", ""]
    lines += [
        "| configuration | seeds | final held-out mean (per seed) | spread | activated non-emb. | activated | total "
        "| tokens | tokens / act. non-emb. param | tokens/s (median) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, g in groups.items():
        r = g["runs"][0]
        per_seed = ", ".join(f"{v:.4f}" for v in g["values"])
        lines.append(
            f"| {key} ({r['label']}) | {g['seeds']} | **{g['mean']:.4f}** ({per_seed}) | {fmt(g['spread'])} "
            f"| {r['activated_nonembedding_params']:,} | {r['activated_params']:,} | {r['total_params']:,} "
            f"| {r['train_tokens'] / 1e6:.2f}M | {r['tokens_per_activated_nonembedding_param']:.1f} "
            f"| {np.median([x['tokens_per_sec_median'] for x in g['runs']]):,.0f} |"
        )
    missing = [e["name"] for e in entries if not e["finished"]]
    if missing:
        lines += ["", f"Not finished (left out): {', '.join(missing)}"]
    lines += ["", "### Verdicts (gap = loss(A) - loss(B); > 0: B is lower)", "", f"Rule: {VERDICT_RULE}", ""]
    lines += [
        "| comparison | A | B | gap | threshold (2x spread) | eval SE of gap | finding |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in verdict.values():
        if "a" in v:
            borrowed = " (borrowed)" if v["spread_borrowed"] else ""
            lines.append(
                f"| {v['question']} | {v['size']}-{v['a']} | {v['size']}-{v['b']} | {v['gap_a_minus_b']:+.4f} "
                f"| {v['threshold']:.4f}{borrowed} | {v['eval_se_of_gap']:.4f} | {v['finding']} |"
            )
        else:
            lines.append(f"| {v['question']} | | | {v['moved']:+.4f} | {v['threshold']:.4f} | | {v['finding']} |")
    sources = sorted({s for g in groups.values() for s in g["runs"][0]["final_heldout"] if s != "mean"})
    lines += ["", "### Held-out loss per source (mean over seeds)", ""]
    lines += ["| configuration | " + " | ".join(sources) + " |", "|---|" + "---|" * len(sources)]
    for key, g in groups.items():
        cells = [fmt(np.mean([r["final_heldout"][s] for r in g["runs"]]), 3) for s in sources]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "### Routing (means over training and MoE layers; seed 0)", ""]
    lines += [
        "| configuration | 1st dropped | 2nd dropped | max/mean load | gate entropy (last window) |",
        "|---|---|---|---|---|",
    ]
    for key, g in groups.items():
        r = g["runs"][0]
        if r["experts"]:
            lines.append(
                f"| {key} | {100 * r['dropped_first_mean']:.2f}% | {100 * r['dropped_second_mean']:.2f}% "
                f"| {r['load_max_over_mean_mean']:.2f} | {r['gate_entropy_last']:.3f} |"
            )
    lines += ["", "### Noise", ""]
    lines += ["| configuration | seed spread | eval SE of one mean (bootstrap over held-out rows) |", "|---|---|---|"]
    for key in groups:
        lines.append(f"| {key} | {fmt(noise['seed_spread'].get(key))} | {noise['eval_se_of_one_mean'][key]:.4f} |")
    for key, se in noise.get("eval_se_of_seed0_minus_seed1", {}).items():
        lines += ["", f"Eval SE of the paired gap between two seeds of {key}: {se:.4f}."]
    for size, stats in data.items():
        if stats:
            lines += ["", f"### Data at {size}: tokens drawn and epochs per source", ""]
            lines += ["| source | weight | documents | held-out docs | held-out tokens | tokens drawn | epochs |"]
            lines += ["|---|---|---|---|---|---|---|"]
            for name, s in stats.items():
                lines.append(
                    f"| {name} | {s['weight']:.3f} | {s['documents']:,} | {s['heldout_documents']} "
                    f"| {s['heldout_tokens']:,} | {s['tokens']:,} | {s['epochs']:.2f} |"
                )
    return "\n".join(lines) + "\n"


def environment() -> dict:
    """What a run's floating-point results depend on besides the code: versions and the host CPU (XLA
    compiles for the CPU it finds, so another CPU model rounds differently and runs drift apart)."""
    import jax
    import jaxlib

    cpu = {}
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "flags") and key.strip() not in cpu:
                    cpu[key.strip()] = value.strip()
    flags = set(cpu.get("flags", "").split())
    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "cpu_model": cpu.get("model name", platform.processor()),
        "cpu_vector_isa": [isa for isa in ("avx512f", "avx2", "fma", "avx") if isa in flags],
    }


def write_report(out: str, scale, specs: list, plots: str, data_root: str) -> dict:
    """claims.json, report.md and the plots from whatever the runs have written so far."""
    from glam_claims import size_of

    entries = [collect_run(out, s, size_of(scale, s.size).steps, scale.tokens_per_step) for s in specs]
    groups = group(entries)
    verdict = verdicts(groups, [s.name for s in scale.sizes])
    noise = noise_summary(groups) if groups else {}
    data = {s.name: data_stats(out, scale, s, data_root) for s in scale.sizes}
    claims = {
        "rule": VERDICT_RULE,
        "runs": [{k: v for k, v in e.items() if not k.startswith("_")} for e in entries],
        "verdict": verdict,
        "noise": noise,
        "data": data,
        "scale": {"batch_size": scale.batch_size, "seq_len": scale.seq_len, "vocab_size": scale.vocab_size},
        "environment": environment(),
        "sweep": read_json(os.path.join(out, "sweep.json")),
    }
    write_json(os.path.join(out, "claims.json"), claims)
    if groups:
        plot_all(groups, scale, plots)
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write(markdown(entries, groups, verdict, noise, data))
    return claims
