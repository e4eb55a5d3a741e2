"""GLaM's central claims in miniature, powered and controlled, on a CPU.

    .venv/bin/python experiments/glam_claims.py --scale powered --out runs/claims --workers 2

Claim 1: at equal activated compute a sparse model reaches a lower loss than a dense one; claim 2:
more experts help at fixed compute (paper §6; reference doc §7). What it runs (``plan_runs``):

- one SentencePiece tokenizer (2,048 pieces), trained once on the six-genre mixture without its
  held-out documents and given to every run as ``data.tokenizer``; the shared corpus mixed by paper
  Table 3's weights; every run of a size sees the same tokens in the same order (``data.seed`` is
  fixed; ``train.seed`` sets the initialisation and the routing RNG);
- at the main size (``d64``: d_model 64, 4 layers, expert width F = 256, 3,200 steps of 16 x 128
  slots = 6.3M target tokens, rows being 95.9% full; >= 20 per activated non-embedding parameter):
  the dense twin (gated-GELU FFNs of width 7F/6 everywhere: equal activated parameters), GLaM with
  E in {4, 8, 16, 32, 64}, and three controls: ``form_matched`` (E = 2, top-2 of 2: both non-gated
  experts on for every token, i.e. dense at equal activated compute in GLaM's own FFN form),
  ``gated_experts`` (E = 8 with gated-GELU experts of width 2F/3, against the gated dense twin) and
  ``dense_total`` (a dense model with E = 8's total parameter count, trained on the same tokens: the
  ceiling its extra parameters could buy densely); 3 seeds for dense, E = 8 and E = 2;
- a second size point (``d32``: d_model 32, expert width 128, 800 steps = 1.57M tokens, the same
  tokens per parameter) with dense, E = 8 and E = 2 at 3 seeds each. A *larger* second point does not
  fit the corpus: at Table 3 weights web, nps_chat and switchboard reach 4 epochs at about 6.7M tokens.

The verdict rule, fixed before the sweep ran (``claims_report.VERDICT_RULE``): an effect counts
where the gap exceeds 2x the larger seed spread (max - min over seeds) of the two configurations.

Re-running continues a crashed sweep: a finished run (``summary.json``) is reused, a partial one
resumes from its last checkpoint. ``--workers N`` trains N runs at a time, one per CPU core (each
single-threaded: on 2 cores that is ~20% more tokens/s in total than one run on both); workers claim
runs through a ``.claim`` file in the run's folder, so two invocations on one ``--out`` share the
work. Outputs: ``OUT/<run>/`` (metrics.jsonl, checkpoints, summary.json, heldout_rows.json),
``OUT/claims.json`` (the summary ``docs/results/claims.json`` is a copy of), ``OUT/report.md`` and
the plots (``--plots``).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

from sweep_common import base_config, prepare_out, read_json, record_invocation, sweep_parser, write_json

# --------------------------------------------------------------------------------------------
# The plan: sizes, configurations, seeds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    """One model size of the sweep. ``ffn_dim`` is the expert width F; the dense twin gets 7F/6."""

    name: str
    d_model: int
    num_heads: int
    head_dim: int
    ffn_dim: int
    steps: int
    eval_every: int
    configs: tuple[str, ...]  # keys of ``config_overrides``
    seeds: dict = field(default_factory=dict)  # config → number of seeds (default 1)


@dataclass(frozen=True)
class Scale:
    """A whole sweep: its sizes and what every run shares."""

    sizes: tuple[Size, ...]
    batch_size: int = 16
    seq_len: int = 128
    num_layers: int = 4
    vocab_size: int = 2048
    warmup_steps: int = 100
    log_every: int = 40  # divides every eval_every: the tokens trained by each evaluation are exact
    eval_batches: int = 16  # per source: enough for every held-out token of the shared corpus
    tokenizer_docs: int = 20_000
    min_tokens_per_param: float = 20.0  # every run but dense_total (same tokens, more parameters)
    fill: float = 0.95  # target tokens per row slot, at least (measured 0.959: short documents are not split)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


MAIN = ("dense", "e2", "e4", "e8", "e16", "e32", "e64", "e8-geglu", "dense-total")
THREE = {"dense": 3, "e8": 3, "e2": 3}
SCALES = {
    "powered": Scale(
        sizes=(
            Size("d64", 64, 4, 16, 256, steps=3200, eval_every=320, configs=MAIN, seeds=THREE),
            Size("d32", 32, 2, 16, 128, steps=800, eval_every=80, configs=("dense", "e8", "e2"), seeds=THREE),
        )
    ),
    # Plumbing only (tests/test_experiments.py): a model of a few thousand parameters, 4 steps.
    "smoke": Scale(
        sizes=(Size("d16", 16, 2, 8, 32, steps=4, eval_every=2, configs=("dense", "e8"), seeds={"dense": 2}),),
        batch_size=8,  # the tests simulate 8 devices
        seq_len=16,
        num_layers=2,
        vocab_size=512,
        warmup_steps=2,
        log_every=2,
        eval_batches=1,
        tokenizer_docs=300,
        min_tokens_per_param=0.0,
    ),
}

CONTROLS = {"e2": "form_matched", "e8-geglu": "gated_experts", "dense-total": "dense_total"}


@dataclass(frozen=True)
class RunSpec:
    """One training run: its folder name, its configuration (without the seed) and seed."""

    name: str  # e.g. d64-e8-s1
    size: str
    config: str  # e.g. e8
    seed: int
    experts: int  # 0 = dense
    control: str | None
    label: str

    @property
    def key(self) -> str:
        return f"{self.size}-{self.config}"


def _experts(config: str) -> int:
    return int(config[1:].split("-")[0]) if config.startswith("e") else 0


def _label(config: str) -> str:
    return {
        "dense": "dense (gated twin)",
        "e2": "E=2 (form-matched dense control)",
        "e8-geglu": "E=8, gated experts",
        "dense-total": "dense, E=8's total params",
    }.get(config, f"GLaM E={_experts(config)}")


def plan_runs(scale: Scale) -> list[RunSpec]:
    """Every run, in the order workers take them: first seeds of the main size first (the headline
    and the longest runs), then the other seeds, then the second size."""
    runs = []
    for size in scale.sizes:
        for config in size.configs:
            for seed in range(size.seeds.get(config, 1)):
                runs.append(
                    RunSpec(
                        f"{size.name}-{config}-s{seed}",
                        size.name,
                        config,
                        seed,
                        _experts(config),
                        CONTROLS.get(config),
                        _label(config),
                    )
                )
    order = {s.name: i for i, s in enumerate(scale.sizes)}
    first = ("dense-total", "dense", "e8", "e2")  # the longest, then the headline
    return sorted(
        runs,
        key=lambda r: (order[r.size], r.seed > 0, first.index(r.config) if r.config in first else len(first)),
    )


def size_of(scale: Scale, name: str) -> Size:
    return next(s for s in scale.sizes if s.name == name)


def _dense_width_for_total(base, total: int) -> int:
    """The dense FFN width whose model has ``total`` parameters (the count is linear in the width)."""
    from glam.config import apply_overrides
    from glam.model.flops import model_size

    def params(width: int) -> int:
        return model_size(apply_overrides(base, ["moe.num_experts=0", f"model.ffn_dim={width}"])).params_total

    slope = params(2) - params(1)
    return round(1 + (total - params(1)) / slope)


def config_overrides(base, config: str) -> list[str]:
    """Dotted overrides that turn the size's base config into ``config``."""
    from glam.config import apply_overrides
    from glam.model.flops import model_size

    F = base.model.ffn_dim
    if config == "dense":
        return ["moe.num_experts=0", f"model.ffn_dim={F * 7 // 6}"]  # presets.tiny_dense
    if config == "dense-total":
        total = model_size(apply_overrides(base, ["moe.num_experts=8"])).params_total
        return ["moe.num_experts=0", f"model.ffn_dim={_dense_width_for_total(base, total)}"]
    if config.endswith("-geglu"):  # 2 gated experts of width 2F/3 activate 2·3·M·2F/3 = 4·M·F, as 2 plain ones
        return [
            f"moe.num_experts={_experts(config)}",
            "model.expert_activation=geglu",
            f"moe.expert_dim={round(2 * F / 3)}",
        ]
    return [f"moe.num_experts={_experts(config)}"]


def run_config(scale: Scale, spec: RunSpec, data_root: str | None = None, tokenizer: str = ""):
    from glam.config import apply_overrides

    base = base_config(scale, size_of(scale, spec.size), data_root, tokenizer)
    cfg = apply_overrides(base, [*config_overrides(base, spec.config), f"train.seed={spec.seed}"])
    return dataclasses.replace(cfg, name=spec.name)


# --------------------------------------------------------------------------------------------
# Running: tokenizer, runs claimed by workers, per-row held-out losses
# --------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def ensure_tokenizer(scale: Scale, data_root: str, out: str) -> str:
    """Train the sweep's one tokenizer (once), never on a held-out document; returns its path."""
    from glam.data.pipeline import train_mixture_tokenizer

    path = os.path.join(out, "tokenizer.model")
    if not os.path.isfile(path):
        start = time.perf_counter()
        cfg = base_config(scale, scale.sizes[0], data_root, tokenizer="")
        train_mixture_tokenizer(cfg, out_path=path, vocab_size=scale.vocab_size)
        log(f"tokenizer: {path} ({time.perf_counter() - start:.0f}s)")
    return os.path.abspath(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(run_dir: str) -> bool:
    """Take the run for this process: create ``.claim`` (atomically), or take over a dead owner's."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, ".claim")
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = int(open(path).read().strip() or 0)
            except (OSError, ValueError):
                owner = 0
            if owner and _alive(owner):
                return False
            try:
                os.remove(path)  # a crashed worker's claim
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def release(run_dir: str) -> None:
    try:
        os.remove(os.path.join(run_dir, ".claim"))
    except FileNotFoundError:
        pass


def heldout_row_losses(cfg, run_dir: str) -> dict[str, list[list[float]]]:
    """Per source, [loss sum, target tokens] of every held-out row under the final parameters: what
    the loop's held-out mean is made of, kept per row so the report can bootstrap its noise."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from glam.checkpoint.inference import load_for_inference
    from glam.data.pipeline import DataPipeline
    from glam.model.losses import forward, token_log_likelihood

    _, params, tokenizer = load_for_inference(run_dir)

    @jax.jit
    def rows(params, batch):
        logits, _ = forward(cfg, params, batch, train=False)
        ll, _ = token_log_likelihood(logits, batch["targets"])
        w = batch["loss_weights"].astype(jnp.float32)
        return -jnp.sum(ll * w, axis=1), jnp.sum(w, axis=1)

    pipeline = DataPipeline(cfg, tokenizer, prefetch=0)
    out = {}
    for source in pipeline.sources:
        batches = pipeline.heldout_batches(source.name, cfg.train.eval_batches)  # the loop's own batches
        pairs = [np.stack(jax.device_get(rows(params, b)), axis=1) for b in batches]
        table = np.concatenate(pairs)
        out[source.name] = table[table[:, 1] > 0].tolist()
    pipeline.close()
    return out


def train_run(cfg, run_dir: str) -> dict:
    """Train (or resume) one run, then record its per-row held-out losses and its summary. A signal that
    stops the training (its checkpoint saved) ends the worker: it neither records an unfinished run nor
    starts the next one (``train_all`` releases the claim on the way out)."""
    from glam.train.loop import train

    log(f"{cfg.name}: training {cfg.train.steps} steps")
    start = time.perf_counter()
    result = train(cfg, run_dir)
    if result.get("interrupted"):  # SIGINT/SIGTERM: checkpoint saved; the whole worker stops, not just this run
        log(f"{cfg.name}: stopped by {result['interrupted']} at step {result['step']}; rerun the sweep to resume")
        raise SystemExit(130)
    rows = heldout_row_losses(cfg, run_dir)
    write_json(os.path.join(run_dir, "heldout_rows.json"), rows)
    summary = {
        "step": result["step"],
        "start_step": result["start_step"],  # > 0: resumed, and wall_seconds covers only the rest
        "heldout": result["heldout"],
        "compile_seconds": result["compile_seconds"],
        "skipped_steps": result["skipped_steps"],
        "wall_seconds": time.perf_counter() - start,
        "threads": 1 if SINGLE_THREAD in os.environ.get("XLA_FLAGS", "") else os.cpu_count(),
    }
    write_json(os.path.join(run_dir, "summary.json"), summary)
    log(
        f"{cfg.name}: held-out mean {result['heldout'].get('heldout/mean', float('nan')):.4f} "
        f"in {summary['wall_seconds']:.0f}s"
    )
    return summary


def finished(run_dir: str, steps: int) -> bool:
    done = read_json(os.path.join(run_dir, "summary.json"))
    return bool(done) and done.get("step") == steps


def work(out: str, data_root: str, scale: Scale, only: list[str] | None) -> int:
    """Train every unfinished run nobody else holds, in plan order; returns how many this process ran."""
    tokenizer = ensure_tokenizer(scale, data_root, out)
    specs = [s for s in plan_runs(scale) if not only or s.name in only]
    return train_all(out, [s.name for s in specs], {s.name: run_config(scale, s, data_root, tokenizer) for s in specs})


def train_all(out: str, names: list[str], configs: dict) -> int:
    """Train the runs ``names`` (in that order) that are unfinished and held by no other process, each in
    ``OUT/<name>`` from ``configs[name]`` (built, so validated, before any run starts); returns how many
    this process ran. ``glam_today`` runs its sweep with it too."""
    ran = 0
    for name in names:
        run_dir = os.path.join(out, name)
        if finished(run_dir, configs[name].train.steps) or not claim(run_dir):
            continue
        try:
            if not finished(run_dir, configs[name].train.steps):
                train_run(configs[name], run_dir)
                ran += 1
        finally:
            release(run_dir)
    return ran


SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def run_workers(workers: int, script: str = __file__) -> None:
    """Start ``workers`` copies of ``script`` (this one, or a sibling sweep with the same ``--worker``
    flag) on this command line, worker i pinned to CPU core i and single-threaded."""
    procs = []
    for i in range(workers):
        env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {SINGLE_THREAD}".strip())
        argv = [sys.executable, os.path.abspath(script), "--worker", str(i), *sys.argv[1:]]
        procs.append(subprocess.Popen(argv, env=env))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a worker failed (exit codes {codes}); rerun the same command to continue")


def main(argv: list[str] | None = None) -> int:
    args = sweep_parser(__doc__.split("\n\n")[0], "runs/claims", SCALES, tokenizer=False).parse_args(argv)
    only = [s for s in args.only.split(",") if s] or None
    scale = SCALES[args.scale]
    prepare_out(args)
    if args.worker >= 0:  # a child of --workers: pinned by prepare_out; train, exit (the parent reports)
        work(args.out, args.data_root, scale, only)
        return 0
    from claims_report import write_report

    start = time.perf_counter()
    if not args.report_only:
        ensure_tokenizer(scale, args.data_root, args.out)  # once, before the workers start
        if args.workers > 1:
            run_workers(args.workers)
        else:
            work(args.out, args.data_root, scale, only)
        record_invocation(args.out, start)
    write_report(args.out, scale, plan_runs(scale), args.plots, args.data_root)
    log(f"report: {args.out}/report.md, {args.out}/claims.json, plots in {args.plots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
