"""What GLaM would change today, powered (issue 26): expert granularity, MoE in every layer, load balancing.

    .venv/bin/python experiments/glam_today.py --out runs/today --data-root ../shared/data --workers 2 \\
        --tokenizer runs/claims/tokenizer.model

At the claims sweep's main size (``d64`` of ``glam_claims.py``: d_model 64, 4 layers, expert width
F = 256, 3,200 steps of 16 x 128 slots = 6.3M target tokens, >= 20 tokens per activated non-embedding
parameter, routing groups of one 128-token row; the same data, order, tokenizer and held-out rows), 3
seeds of every configuration:

- ``e8``: GLaM E = 8, top-2, capacity factor 2, GShard's per-group aux loss 0.01 (the baseline);
- **granularity** ``g2``, ``g4``, ``g8`` (Krajewski et al. 2024; DeepSeekMoE): each expert split into g
  narrower ones, 8g experts of width F/g, top-2g, at equal activated and equal total expert parameters.
  The capacity factor is 2g, so every expert keeps C = 128·2g/8g = 32 slots per group, one per
  assignment on average, as E = 8's; GLaM's aux loss still counts first choices;
- **every layer** ``every``: a MoE FFN in all 4 layers (Mixtral, DeepSeek) instead of every other one.
  GLaM's dense layers are gated-GELU FFNs of width F (3·M·F parameters), so per pair GLaM activates
  3MF + 2·2MF = 7MF and holds 3MF + 8·2MF = 19MF. Two MoE layers of E' experts of width w, top-2,
  activate 8Mw and hold 4E'Mw: w = 7F/8 = 224 holds the activated count exactly, and then no integer E'
  holds the total (19/3.5 = 5.43), so E' = 5 (total expert parameters 6% below GLaM's, the nearer
  side, and against the candidate);
- **balancing** ``bias``: DeepSeek-V3's auxiliary-loss-free bias (γ = 1e-3, no aux loss); ``global``:
  the global-batch balance loss (Qiu et al. 2025: expert fractions over the whole 16-row batch instead of
  per 128-token group; ``moe.balance=global_batch``), weight 0.01;
- ``dense``: the dense twin (gated GELU of width 7F/6 in every layer), the claims sweep's control.

The claims sweep's own d64 runs did not reproduce bit for bit with today's code (held-out mean at step 0
8.13448 vs 8.13404 for E = 8, 8.09557 vs 8.09541 for the dense twin; the data and initial parameters
are identical, so the arithmetic differs: the host CPU, see docs/results.md and baseline_check.py), so
``e8`` and ``dense`` are rerun here. The verdict rule is the claims sweep's
(``claims_report.VERDICT_RULE``), fixed before this sweep ran: an effect counts where the gap exceeds
2x the larger seed spread of the two configurations.

The runner is the claims sweep's (``glam_claims.train_all``): re-running continues a stopped sweep
(finished runs reused, partial ones resumed from their last checkpoint), ``--workers N`` trains N runs
at once, one per core, and two invocations on one ``--out`` share the work. Outputs: ``OUT/<run>/``,
``OUT/today.json`` (``docs/results/today.json`` is its copy), ``OUT/report.md`` and the plot
``today_heldout.png`` (``--plots``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass

import claims_report as cr
import glam_claims as gc
import numpy as np
import sweep_common as sc


def _granular(g: int):
    def overrides(F: int) -> list[str]:
        return [
            f"moe.num_experts={8 * g}",
            f"moe.top_k={2 * g}",
            f"moe.expert_dim={F // g}",
            f"moe.capacity_factor_train={2 * g}",
            f"moe.capacity_factor_eval={2 * g}",
        ]

    return overrides


#: configuration → (overrides of the size's base config given the expert width F, label), in run order
CONFIGS = {
    "e8": (lambda F: ["moe.num_experts=8"], "GLaM E=8, top-2 (baseline)"),
    "bias": (lambda F: ["moe.num_experts=8", "moe.balance=bias", "moe.aux_loss_weight=0"], "bias balancing, no aux"),
    "global": (lambda F: ["moe.num_experts=8", "moe.balance=global_batch"], "global-batch balance loss"),
    "g2": (_granular(2), "granularity 2: 16 experts of F/2, top-4"),
    "g4": (_granular(4), "granularity 4: 32 experts of F/4, top-8"),
    "g8": (_granular(8), "granularity 8: 64 experts of F/8, top-16"),
    "every": (
        lambda F: ["moe.layers=all", "moe.num_experts=5", f"moe.expert_dim={7 * F // 8}"],
        "MoE in every layer: 5 experts of 7F/8",
    ),
    "dense": (lambda F: ["moe.num_experts=0", f"model.ffn_dim={F * 7 // 6}"], "dense twin"),
}
SEEDS = 3
#: (name, baseline A, candidate B, question): gap = loss(A) - loss(B), > 0: B lower
COMPARISONS = [
    ("granularity_2", "e8", "g2", "granularity 2 vs GLaM's full-width experts"),
    ("granularity_4", "e8", "g4", "granularity 4 vs GLaM's full-width experts"),
    ("granularity_8", "e8", "g8", "granularity 8 vs GLaM's full-width experts"),
    ("granularity_8_vs_4", "g4", "g8", "granularity 8 vs 4"),
    ("every_layer", "e8", "every", "MoE in every layer vs every other layer"),
    ("bias_balance", "e8", "bias", "DeepSeek-V3 bias balancing vs GShard's aux loss"),
    ("global_batch_balance", "e8", "global", "global-batch balance loss vs per-group aux loss"),
    ("global_vs_bias", "bias", "global", "global-batch balance loss vs bias balancing"),
    ("e8_vs_dense", "dense", "e8", "GLaM E=8 vs the dense twin (the claims sweep's claim 1)"),
]
#: the questions of the "what to change" table: (question, the comparisons that answer it)
QUESTIONS = [
    ("expert granularity", ("granularity_2", "granularity_4", "granularity_8")),
    ("MoE in every layer", ("every_layer",)),
    ("load balancing", ("bias_balance", "global_batch_balance")),
]


@dataclass(frozen=True)
class RunSpec:
    """One run; the fields ``claims_report.collect_run`` reads."""

    name: str
    size: str
    config: str
    seed: int
    experts: int
    label: str
    overrides: tuple[str, ...]
    control: str | None = None


def plan(scale: gc.Scale) -> list[RunSpec]:
    """Seed 0 of every configuration first (a first answer to every question), then seed 1, then 2."""
    size = scale.sizes[0]
    runs = []
    for seed in range(SEEDS):
        for config, (overrides, label) in CONFIGS.items():
            o = tuple(overrides(size.ffn_dim))
            experts = next((int(v.split("=")[1]) for v in o if v.startswith("moe.num_experts=")), 0)
            runs.append(RunSpec(f"{size.name}-{config}-s{seed}", size.name, config, seed, experts, label, o))
    return runs


def run_config(scale: gc.Scale, spec: RunSpec, data_root: str | None = None, tokenizer: str = ""):
    from glam.config import apply_overrides

    base = sc.base_config(scale, scale.sizes[0], data_root, tokenizer)
    return dataclasses.replace(apply_overrides(base, [*spec.overrides, f"train.seed={spec.seed}"]), name=spec.name)


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def verdicts(groups: dict, size: str) -> dict:
    return {n: r for n, a, b, q in COMPARISONS if (r := cr.compare(groups, size, a, b, q))}


def recommendations(verdict: dict) -> list[dict]:
    """Per question: the change the rule supports (the largest counted gain over GLaM), or nothing."""
    rows = []
    for question, names in QUESTIONS:
        results = [verdict[n] for n in names if n in verdict]
        if not results:
            rows.append({"question": question, "change": "(not run yet)", "gain": None, "threshold": None})
            continue
        gains = [r for r in results if r["counts"] and r["gap_a_minus_b"] > 0]
        best = max(gains or results, key=lambda r: r["gap_a_minus_b"])
        row = {
            "question": question,
            "change": CONFIGS[best["b"]][1] if gains else "nothing",
            "compared": best["b"],
            "gain": best["gap_a_minus_b"],
            "threshold": best["threshold"],
            "seeds": min(best["seeds_a"], best["seeds_b"]),
        }
        rows.append(row)
    return rows


def plot(groups: dict, size: str, plots: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(plots, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    panels = (("e8", "g2", "g4", "g8"), ("e8", "every", "dense"), ("e8", "bias", "global"))
    titles = ("expert granularity", "MoE in every layer", "load balancing")
    for ax, configs, title in zip(axes, panels, titles, strict=True):
        for config in configs:
            g = groups.get(f"{size}-{config}")
            if not g:
                continue
            x = np.array([t for t, _ in g["runs"][0]["curve"]], float)
            y = np.array([[v for _, v in r["curve"]] for r in g["runs"]])
            keep = x >= 0.3 * x[-1]
            ax.plot(x[keep] / 1e6, y.mean(0)[keep], marker="o", ms=3, label=f"{CONFIGS[config][1]} ({g['seeds']})")
            ax.fill_between(x[keep] / 1e6, y.min(0)[keep], y.max(0)[keep], alpha=0.15, lw=0)
        ax.set(xlabel="training tokens (M)", ylabel="held-out loss (mean over 9 sources)", title=f"{size}: {title}")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    path = os.path.join(plots, "today_heldout.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def markdown(groups: dict, verdict: dict, advice: list[dict], size: str) -> str:
    f = cr.fmt
    lines = [
        "| configuration | seeds | final held-out mean (per seed) | spread | activated | total | "
        "1st dropped | later dropped | max/mean load | tokens/param | tok/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for config, (_, label) in CONFIGS.items():
        g = groups.get(f"{size}-{config}")
        if not g:
            lines.append(f"| {size}-{config} ({label}) | 0 | (not run yet) | | | | | | | | |")
            continue
        runs = g["runs"]
        r0 = runs[0]

        def mean(key, scale=1.0, digits=1, runs=runs):
            values = [r[key] for r in runs if r.get(key) is not None]
            return f"{scale * np.mean(values):.{digits}f}" if values else "–"

        lines.append(
            f"| {size}-{config} ({label}) | {g['seeds']} | **{g['mean']:.4f}** "
            f"({', '.join(f'{v:.4f}' for v in g['values'])}) | {f(g['spread'])} | {r0['activated_params']:,} | "
            f"{r0['total_params']:,} | {mean('dropped_first_mean', 100, 2)}% | "
            f"{mean('dropped_second_mean', 100, 2)}% | "
            f"{mean('load_max_over_mean_mean', 1, 2)} | {mean('tokens_per_activated_nonembedding_param')} | "
            f"{mean('tokens_per_sec_median', 1, 0)} |"
        )
    lines += ["", f"Rule: {cr.VERDICT_RULE}", ""]
    lines += [
        "| comparison | A | B | seeds | gap A−B | threshold | eval SE of gap | finding |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in verdict.values():
        lines.append(
            f"| {v['question']} | {v['a']} | {v['b']} | {v['seeds_a']}/{v['seeds_b']} | {v['gap_a_minus_b']:+.4f} | "
            f"{v['threshold']:.4f}{' (borrowed)' if v['spread_borrowed'] else ''} | {v['eval_se_of_gap']:.4f} | "
            f"{v['finding']} |"
        )
    lines += ["", "| question | what to change in GLaM | gain (nats) | threshold | seeds |", "|---|---|---|---|---|"]
    for a in advice:
        gain = "–" if a["gain"] is None else f"{a['gain']:+.4f} ({a['compared']})"
        lines.append(f"| {a['question']} | {a['change']} | {gain} | {f(a['threshold'])} | {a.get('seeds', '–')} |")
    return "\n".join(lines) + "\n"


def write_report(out: str, scale: gc.Scale, plots: str, data_root: str) -> dict:
    size = scale.sizes[0]
    specs = plan(scale)
    entries = [cr.collect_run(out, s, size.steps, scale.tokens_per_step) for s in specs]
    groups = cr.group(entries)
    verdict = verdicts(groups, size.name)
    advice = recommendations(verdict)
    result = {
        "rule": cr.VERDICT_RULE,
        "runs": [{k: v for k, v in e.items() if not k.startswith("_")} for e in entries],
        "verdict": verdict,
        "what_to_change": advice,
        "noise": cr.noise_summary(groups) if groups else {},
        "data": {size.name: cr.data_stats(out, scale, size, data_root)},  # tokens and epochs per source
        "environment": cr.environment(),
        "sweep": sc.read_json(os.path.join(out, "sweep.json")),
    }
    sc.write_json(os.path.join(out, "today.json"), result)
    if groups:
        plot(groups, size.name, plots)
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as fh:
        fh.write(markdown(groups, verdict, advice, size.name))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = sc.sweep_parser(__doc__.split("\n\n")[0], "runs/today", gc.SCALES, only="run names or configurations")
    args = parser.parse_args(argv)
    only = {s for s in args.only.split(",") if s}  # run names or configurations
    scale = gc.SCALES[args.scale]
    tokenizer = sc.prepare_out(args)
    if args.worker >= 0:
        specs = [s for s in plan(scale) if not only or s.name in only or s.config in only]
        configs = {s.name: run_config(scale, s, args.data_root, tokenizer) for s in specs}
        gc.train_all(args.out, [s.name for s in specs], configs)
        return 0
    start = time.perf_counter()
    if not args.report_only:
        gc.ensure_tokenizer(scale, args.data_root, args.out)
        gc.run_workers(max(args.workers, 1), __file__)  # even one worker: pinned and single-threaded
        sc.record_invocation(args.out, start)
    write_report(args.out, scale, args.plots, args.data_root)
    gc.log(f"report: {args.out}/report.md, {args.out}/today.json, plot in {args.plots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
