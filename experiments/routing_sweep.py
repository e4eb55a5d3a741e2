"""GLaM's successors' routers and sparse upcycling, compared in the powered miniature (issue 13 §4).

    .venv/bin/python experiments/routing_sweep.py --out runs/routing --data-root ../shared/data --workers 2 \\
        --tokenizer runs/claims/tokenizer.model

At the claims sweep's second size (``d32`` of ``glam_claims.py``: d_model 32, 4 layers, expert width
F = 128, 800 steps of 16 x 128 slots = 1.57M target tokens, >= 20 tokens per activated non-embedding
parameter; the same data, order, tokenizer and held-out rows), 3 seeds of every configuration:

**Routers** (E = 8, all at equal activated compute: every token's routed FLOPs are those of two
experts of width F; capacity one slot per assignment on average, as GLaM's top-2 at cf 2.0):

- ``top2``: GShard top-2, cf 2.0, aux loss 0.01 (GLaM; the claims sweep's ``d32-e8``)
- ``top1``: Switch top-1 with experts of width 2F, cf 1.0
- ``expert-choice``: each expert takes its top-C tokens of the group, C = S·2/E (causal top-2 at evaluation)
- ``top2-zloss``: top-2 + ST-MoE's router z-loss 1e-3
- ``top2-bias``: top-2 with aux-loss-free bias balancing (γ = 1e-3), no aux loss
- ``top2-shared``: top-2 + 1 shared expert, every expert of width 2F/3 (three on per token)

**Upcycling**, at equal total training compute (FLOPs per token from ``glam.model.flops``, the dense
pre-training counted; the budget is 800 steps of the MoE model):

- ``dense-src``: the dense twin (gated GELU of width 7F/6 in every layer), 400 steps
- ``upcycled``: ``dense-src`` upcycled (``glam upcycle --continue``: schedule and data go on) to E = 8
  gated experts of width 7F/6, trained on until the budget is spent
- ``scratch``: the same MoE model from scratch, 800 steps
- ``dense-cont``: the dense twin trained for the whole budget (= ``dense-src`` continued: the rsqrt
  schedule does not depend on ``train.steps``)

The verdict rule is the claims sweep's (``claims_report.VERDICT_RULE``), fixed before this sweep ran.
Re-running continues a stopped sweep (finished runs reused, partial ones resumed); ``--workers N``
trains N runs at once, one per core; an upcycled run waits for its dense source. Outputs:
``OUT/<run>/``, ``OUT/routing.json`` (``docs/results/routing.json`` is its copy), ``OUT/report.md``
and the plots (``--plots``).
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

ROUTERS = {  # config → (overrides after moe.num_experts=8 with F = the size's expert width, label)
    "top2": (lambda F: [], "GShard top-2 (GLaM)"),
    "top1": (
        lambda F: [
            "moe.top_k=1",
            f"moe.expert_dim={2 * F}",
            "moe.capacity_factor_train=1.0",
            "moe.capacity_factor_eval=1.0",
        ],
        "Switch top-1, experts 2F, cf 1",
    ),
    "expert-choice": (lambda F: ["moe.router=expert_choice"], "expert choice, cf 2"),
    "top2-zloss": (lambda F: ["moe.router_z_loss=0.001"], "top-2 + router z-loss 1e-3"),
    "top2-bias": (lambda F: ["moe.balance=bias", "moe.aux_loss_weight=0"], "top-2, bias balancing, no aux"),
    "top2-shared": (lambda F: ["moe.shared_experts=1", f"moe.expert_dim={round(2 * F / 3)}"], "top-2 + 1 shared, 2F/3"),
}
UPCYCLE_LABELS = {
    "dense-src": "dense twin, upcycling source",
    "upcycled": "upcycled from dense-src",
    "scratch": "same MoE from scratch",
    "dense-cont": "dense twin, whole budget",
}
SEEDS = 3
COMPARISONS = [  # (name, baseline A, candidate B, question): gap = loss(A) - loss(B), > 0: B lower
    ("top1_vs_top2", "top2", "top1", "Switch top-1 vs GShard top-2"),
    ("expert_choice_vs_top2", "top2", "expert-choice", "expert choice vs top-2"),
    ("zloss_vs_top2", "top2", "top2-zloss", "router z-loss vs none"),
    ("bias_vs_top2", "top2", "top2-bias", "bias balancing vs the aux loss"),
    ("shared_vs_top2", "top2", "top2-shared", "1 shared + top-2 vs top-2 (equal activated compute)"),
    ("upcycled_vs_scratch", "scratch", "upcycled", "upcycled vs from scratch, equal total compute"),
    ("upcycled_vs_dense", "dense-cont", "upcycled", "upcycled vs dense continued, equal total compute"),
    ("scratch_vs_dense", "dense-cont", "scratch", "MoE from scratch vs dense, equal total compute"),
]


@dataclass(frozen=True)
class RunSpec:
    """One run; the fields ``claims_report.collect_run`` reads, plus its steps, overrides and source."""

    name: str
    size: str
    config: str
    seed: int
    experts: int
    label: str
    steps: int
    overrides: tuple[str, ...]  # for an upcycled run: those given to ``glam upcycle``
    source: str | None = None  # the dense run an upcycled run starts from
    control: str | None = None


def flops_per_token(base, overrides: list[str]) -> float:
    from glam.config import apply_overrides
    from glam.model.flops import model_size

    return model_size(apply_overrides(base, overrides)).flops_per_token_train


def plan(scale: gc.Scale, size: gc.Size) -> list[RunSpec]:
    """Every run in the order workers take them: the dense sources first (the upcycled runs wait for
    them), then each seed's routers, then the rest of the upcycling arm."""
    base = sc.base_config(scale, size, None, "")
    F = size.ffn_dim
    dense = ["moe.num_experts=0", f"model.ffn_dim={F * 7 // 6}"]  # the claims sweep's dense twin
    moe = [dense[1], "moe.num_experts=8", "model.expert_activation=geglu"]  # what upcycling makes of it
    c_dense, c_moe = flops_per_token(base, dense), flops_per_token(base, moe)
    budget = size.steps * c_moe  # per token slot: 800 steps of the MoE model
    source_steps = size.steps // 2
    upcycled_steps = source_steps + round((budget - source_steps * c_dense) / c_moe)
    dense_steps = round(budget / c_dense)

    def spec(config, seed, experts, steps, overrides, source=None):
        label = ROUTERS[config][1] if config in ROUTERS else UPCYCLE_LABELS[config]
        name = f"{size.name}-{config}-s{seed}"
        return RunSpec(name, size.name, config, seed, experts, label, steps, tuple(overrides), source)

    runs = [spec("dense-src", seed, 0, source_steps, dense) for seed in range(SEEDS)]
    for seed in range(SEEDS):
        runs += [spec(c, seed, 8, size.steps, ["moe.num_experts=8", *extra(F)]) for c, (extra, _) in ROUTERS.items()]
    for seed in range(SEEDS):
        runs += [
            spec("scratch", seed, 8, size.steps, moe),
            spec("dense-cont", seed, 0, dense_steps, dense),
            spec("upcycled", seed, 8, upcycled_steps, ["moe.num_experts=8"], f"{size.name}-dense-src-s{seed}"),
        ]
    return runs


def run_config(scale: gc.Scale, size: gc.Size, spec: RunSpec, data_root: str | None = None, tokenizer: str = ""):
    from glam.config import apply_overrides

    base = sc.base_config(scale, size, data_root, tokenizer)
    cfg = apply_overrides(base, [*spec.overrides, f"train.steps={spec.steps}", f"train.seed={spec.seed}"])
    return dataclasses.replace(cfg, name=spec.name)


def train_upcycled(spec: RunSpec, out: str) -> None:
    """``glam upcycle --continue`` from the finished source (once), then train on like any run."""
    from glam.checkpoint.manager import checkpoint_dir, read_config
    from glam.train.upcycle import upcycle

    run_dir = os.path.join(out, spec.name)
    if not (os.path.isdir(checkpoint_dir(run_dir)) and os.listdir(checkpoint_dir(run_dir))):
        overrides = [*spec.overrides, f"train.steps={spec.steps}", f"train.seed={spec.seed}"]
        upcycle(os.path.join(out, spec.source), run_dir, overrides, continue_source=True)
    gc.train_run(dataclasses.replace(read_config(run_dir), name=spec.name), run_dir)


def work(out: str, data_root: str, scale: gc.Scale, size: gc.Size, tokenizer: str, only: list[str] | None) -> None:
    """Train every unfinished run nobody else holds; an upcycled run waits until its source is done."""
    specs = {s.name: s for s in plan(scale, size) if not only or s.name in only}
    configs = {n: run_config(scale, size, s, data_root, tokenizer) for n, s in specs.items() if not s.source}
    steps = {s.name: s.steps for s in plan(scale, size)}
    pending = list(specs.values())
    while pending:
        progressed = False
        for spec in list(pending):
            run_dir = os.path.join(out, spec.name)
            if gc.finished(run_dir, spec.steps):
                pending.remove(spec)
                continue
            if spec.source and not gc.finished(os.path.join(out, spec.source), steps[spec.source]):
                continue
            if not gc.claim(run_dir):
                continue
            try:
                if not gc.finished(run_dir, spec.steps):
                    if spec.source:
                        train_upcycled(spec, out)
                    else:
                        gc.train_run(configs[spec.name], run_dir)
                    progressed = True
            finally:
                gc.release(run_dir)
        if pending and not progressed:
            time.sleep(5)  # another worker holds what is left, or a source is still training


def time_steps(scale: gc.Scale, size: gc.Size, repeats: int) -> dict:
    """Seconds per training step of every architecture (seed 0; an upcycled run has the scratch
    model's, a dense source the dense one's), interleaved in one run (benchmarks/train_step.py's step)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    from common import interleaved
    from train_step import stepper

    specs = [s for s in plan(scale, size) if s.seed == 0 and s.config not in ("upcycled", "dense-src")]
    seconds = interleaved({s.config: stepper(run_config(scale, size, s)) for s in specs}, repeats)
    return {"seconds_per_step": seconds, "repeats": repeats, "load": os.getloadavg(), "threads": os.cpu_count()}


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def collect(out: str, scale: gc.Scale, specs: list[RunSpec]) -> list[dict]:
    """``claims_report.collect_run`` of every run, plus its total training compute (source included)."""
    entries = {s.name: cr.collect_run(out, s, s.steps, scale.tokens_per_step) for s in specs}
    steps = {s.name: s.steps for s in specs}
    for spec in specs:
        e = entries[spec.name]
        if not e["finished"]:
            continue
        own = spec.steps - (steps[spec.source] if spec.source else 0)  # an upcycled run starts at its source's step
        e.update(steps=spec.steps, own_steps=own, train_slots=own * scale.tokens_per_step)
        e["train_flops_slots"] = e["train_slots"] * e["flops_per_token_train"]
    for spec in specs:
        e = entries[spec.name]
        if e["finished"]:
            src = entries[spec.source] if spec.source else None
            e["source_flops_slots"] = src["train_flops_slots"] if src and src["finished"] else 0.0
            e["total_flops_slots"] = e["train_flops_slots"] + e["source_flops_slots"]
    return list(entries.values())


def reproduction(out: str, size: str, claims_json: str) -> list[dict]:
    """The same configurations in the claims sweep (docs/results/claims.json): its d32-e8 is ``top2``, its
    d32-dense is ``dense-cont`` at step 800 (the rsqrt schedule does not depend on train.steps)."""
    claims = sc.read_json(claims_json) or {"runs": []}
    theirs = {r["name"]: r.get("final_heldout_mean") for r in claims["runs"]}
    rows = []
    for seed in range(SEEDS):
        for ours, step, name in (
            (f"top2-s{seed}", None, f"e8-s{seed}"),
            (f"dense-cont-s{seed}", 800, f"dense-s{seed}"),
        ):
            run_dir = os.path.join(out, f"{size}-{ours}")
            if theirs.get(f"{size}-{name}") is None or not os.path.isfile(os.path.join(run_dir, "summary.json")):
                continue
            records = [r for r in cr.read_records(run_dir) if r["kind"] == "eval"]
            at = [r["heldout/mean"] for r in records if step is None or r["step"] == step]
            if at:
                value = at[-1] if step is None else at[0]
                row = {"run": f"{size}-{ours}", "step": step or records[-1]["step"], "heldout_mean": value}
                rows.append({**row, "claims_run": f"{size}-{name}", "claims_heldout_mean": theirs[f"{size}-{name}"]})
    return rows


def verdicts(groups: dict, size: str) -> dict:
    return {n: r for n, a, b, q in COMPARISONS if (r := cr.compare(groups, size, a, b, q))}


def plot(groups: dict, size: str, plots: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(plots, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    for config in ROUTERS:
        g = groups.get(f"{size}-{config}")
        if not g:
            continue
        x = np.array([t for t, _ in g["runs"][0]["curve"]], float)
        y = np.array([[v for _, v in r["curve"]] for r in g["runs"]])
        keep = x >= 0.2 * x[-1]
        left.plot(x[keep] / 1e6, y.mean(0)[keep], marker="o", ms=3, label=f"{g['runs'][0]['label']}")
        left.fill_between(x[keep] / 1e6, y.min(0)[keep], y.max(0)[keep], alpha=0.15, lw=0)
    left.set(xlabel="training tokens (M)", ylabel="held-out loss (mean over 9 sources)", title=f"{size}: routers, E=8")
    for config in UPCYCLE_LABELS:
        g = groups.get(f"{size}-{config}")
        if not g:
            continue
        r0 = g["runs"][0]
        start = r0["source_flops_slots"]  # the upcycled curve starts where its source stopped
        per_slot = (
            r0["flops_per_token_train"] * r0["train_slots"] / max(r0["train_tokens"], 1)
        )  # FLOPs per token trained
        x = start + np.array([t for t, _ in r0["curve"]], float) * per_slot
        y = np.array([[v for _, v in r["curve"]] for r in g["runs"]])
        keep = x >= 0.2 * x[-1]
        right.plot(x[keep] / 1e12, y.mean(0)[keep], marker="o", ms=3, label=r0["label"])
        right.fill_between(x[keep] / 1e12, y.min(0)[keep], y.max(0)[keep], alpha=0.15, lw=0)
    right.set(xlabel="total training FLOPs (TFLOP, dense pre-training included)", title=f"{size}: upcycling")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    path = os.path.join(plots, "routing_heldout.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def markdown(entries: list[dict], groups: dict, verdict: dict, size: str, repro: list[dict], timing: dict) -> str:
    f = cr.fmt
    step = (timing or {}).get("seconds_per_step", {})
    lines = [
        "| configuration | seeds | final held-out mean (per seed) | spread | steps | activated | total | "
        "total train FLOPs (slots) | 1st dropped | later dropped | max/mean load | step time ÷ top-2 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for config in [*ROUTERS, *UPCYCLE_LABELS]:
        g = groups.get(f"{size}-{config}")
        if not g:
            lines.append(f"| {size}-{config} | 0 | (not run) | | | | | | | | | |")
            continue
        runs = g["runs"]
        r0 = runs[0]
        arch = {"upcycled": "scratch", "dense-src": "dense-cont"}.get(config, config)
        ratio = f"{step[arch] / step['top2']:.2f}" if arch in step and "top2" in step else "–"

        def mean(key, scale=1.0, digits=1, runs=runs):
            values = [r[key] for r in runs if r.get(key) is not None]
            return f"{scale * np.mean(values):.{digits}f}" if values else "–"

        lines.append(
            f"| {size}-{config} ({r0['label']}) | {g['seeds']} | **{g['mean']:.4f}** "
            f"({', '.join(f'{v:.4f}' for v in g['values'])}) | {f(g['spread'])} | {r0['steps']} | "
            f"{r0['activated_params']:,} | {r0['total_params']:,} | {r0['total_flops_slots'] / 1e12:.2f}T | "
            f"{mean('dropped_first_mean', 100)}% | {mean('dropped_second_mean', 100)}% | "
            f"{mean('load_max_over_mean_mean', 1, 2)} | {ratio} |"
        )
    lines += ["", f"Rule: {cr.VERDICT_RULE}", ""]
    lines += [
        "| comparison | A | B | gap A−B | threshold | eval SE of gap | finding |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in verdict.values():
        lines.append(
            f"| {v['question']} | {v['a']} | {v['b']} | {v['gap_a_minus_b']:+.4f} | {v['threshold']:.4f} | "
            f"{v['eval_se_of_gap']:.4f} | {v['finding']} |"
        )
    if repro:
        lines += [
            "",
            "| this sweep | step | held-out mean | claims sweep | its final | difference |",
            "|---|---|---|---|---|---|",
        ]
        for r in repro:
            lines.append(
                f"| {r['run']} | {r['step']} | {r['heldout_mean']:.4f} | {r['claims_run']} | "
                f"{r['claims_heldout_mean']:.4f} | {r['heldout_mean'] - r['claims_heldout_mean']:+.4f} |"
            )
    return "\n".join(lines) + "\n"


def write_report(out: str, scale: gc.Scale, size: gc.Size, plots: str, claims_json: str = "") -> dict:
    specs = plan(scale, size)
    repro = reproduction(out, size.name, claims_json) if claims_json else []
    timing = sc.read_json(os.path.join(out, "step_times.json"))
    entries = collect(out, scale, specs)
    groups = cr.group(entries)
    verdict = verdicts(groups, size.name)
    result = {
        "rule": cr.VERDICT_RULE,
        "runs": [{k: v for k, v in e.items() if not k.startswith("_")} for e in entries],
        "verdict": verdict,
        "reproduction_of_claims_sweep": repro,
        "step_times": timing,
        "environment": cr.environment(),
        "sweep": sc.read_json(os.path.join(out, "sweep.json")),
    }
    sc.write_json(os.path.join(out, "routing.json"), result)
    if groups:
        plot(groups, size.name, plots)
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as fh:
        fh.write(markdown(entries, groups, verdict, size.name, repro, timing))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = sc.sweep_parser(__doc__.split("\n\n")[0], "runs/routing", gc.SCALES)
    parser.add_argument("--claims", default="docs/results/claims.json", help="the claims sweep's summary, to compare")
    parser.add_argument(
        "--time-steps", type=int, default=0, help="time every architecture's step, N rounds; no training"
    )
    args = parser.parse_args(argv)
    only = [s for s in args.only.split(",") if s] or None
    scale = gc.SCALES[args.scale]
    size = scale.sizes[-1]  # powered: d32, the claims sweep's second size; smoke: its one size
    tokenizer = sc.prepare_out(args)
    if args.worker >= 0:
        work(args.out, args.data_root, scale, size, tokenizer, only)
        return 0
    start = time.perf_counter()
    if args.time_steps:
        sc.write_json(os.path.join(args.out, "step_times.json"), time_steps(scale, size, args.time_steps))
    elif not args.report_only:
        tokenizer = gc.ensure_tokenizer(scale, args.data_root, args.out)
        if args.workers > 1:
            gc.run_workers(args.workers, __file__)
        else:
            work(args.out, args.data_root, scale, size, tokenizer, only)
        sc.record_invocation(args.out, start)
    write_report(args.out, scale, size, args.plots, args.claims)
    gc.log(f"report: {args.out}/report.md, {args.out}/routing.json, plot in {args.plots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
