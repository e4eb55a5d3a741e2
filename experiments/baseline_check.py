"""Why does a sweep run not reproduce? Hash what it starts from and score its initial parameters.

For one run of the claims sweep's plan (``--run``, e.g. ``d64-dense-s0``), under whichever glam is on
``PYTHONPATH`` and the plan of the checkout ``--code``, print as JSON: a hash of each source's held-out
batches, of the first training batch and of the initial parameters, and the held-out loss of the
initial parameters (the run's step-0 evaluation). Run it under two checkouts, or on two machines, and
compare: different hashes point at the data or the initialisation; equal hashes with different losses
point at the arithmetic (the code's, or the CPU's that XLA compiled for). docs/results.md (What GLaM
would change today, setup) used it to compare the claims sweep's commit with today's:

    git worktree add /tmp/claims-code d115c15
    PYTHONPATH=/tmp/claims-code/src .venv/bin/python experiments/baseline_check.py --code /tmp/claims-code \\
        --run d64-dense-s0 --tokenizer runs/claims/tokenizer.model > then.json
    PYTHONPATH=src .venv/bin/python experiments/baseline_check.py --code . \\
        --run d64-dense-s0 --tokenizer runs/claims/tokenizer.model > now.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys


def _digest(arrays) -> str:
    import numpy as np

    h = hashlib.sha256()
    for name, value in arrays:
        h.update(name.encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()[:16]


def fingerprint(code: str, run: str, data_root: str, tokenizer: str, scale: str = "powered") -> dict:
    """Hashes of the run's held-out batches, first training batch and initial parameters, and the held-out
    loss (per source and the mean over sources) of the initial parameters."""
    sys.path.insert(0, os.path.join(os.path.abspath(code), "experiments"))  # that checkout's plan
    import glam_claims as gc
    import jax
    import numpy as np

    from glam.data.pipeline import DataPipeline
    from glam.data.tokenizer import Tokenizer
    from glam.model.losses import loss_fn
    from glam.sharding.mesh import make_mesh
    from glam.train.state import create_train_state

    sc = gc.SCALES[scale]
    spec = next((s for s in gc.plan_runs(sc) if s.name == run), None)
    if spec is None:
        names = ", ".join(s.name for s in gc.plan_runs(sc))
        raise SystemExit(f"--run {run}: not in the {scale} plan; its runs: {names}")
    cfg = gc.run_config(sc, spec, data_root, os.path.abspath(tokenizer))
    pipeline = DataPipeline(cfg, Tokenizer(cfg.data.tokenizer), prefetch=0)
    heldout = {s.name: pipeline.heldout_batches(s.name, sc.eval_batches) for s in pipeline.sources}
    first = pipeline.next_batch()
    pipeline.close()
    params = create_train_state(cfg, make_mesh(cfg)).params
    leaves = [(jax.tree_util.keystr(p), np.asarray(v)) for p, v in jax.tree_util.tree_leaves_with_path(params)]
    scores = jax.jit(lambda params, batch: loss_fn(cfg, params, batch, train=False)[1])
    loss = {}
    for name, batches in heldout.items():
        total = tokens = 0.0
        for batch in batches:
            m = scores(params, batch)
            total, tokens = total + float(m["ce_loss"]) * float(m["tokens"]), tokens + float(m["tokens"])
        if tokens > 0:
            loss[name] = total / tokens
    loss["mean"] = float(np.mean(list(loss.values())))
    return {
        "run": run,
        "heldout_batches": {n: _digest((k, b[k]) for b in bs for k in sorted(b)) for n, bs in heldout.items()},
        "first_train_batch": _digest((k, first[k]) for k in sorted(first)),
        "initial_params": _digest(leaves),
        "step0_heldout": loss,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", default=".", help="the checkout whose experiments/glam_claims.py plans the run")
    parser.add_argument("--run", required=True, help="a run of the plan, e.g. d64-dense-s0")
    parser.add_argument("--data-root", default="../shared/data", help="folder holding corpus/")
    parser.add_argument("--tokenizer", required=True, help="the sweep's tokenizer.model")
    parser.add_argument("--scale", default="powered")
    args = parser.parse_args(argv)
    for path, flag in ((args.tokenizer, "--tokenizer"), (os.path.join(args.code, "experiments"), "--code")):
        if not os.path.exists(path):
            raise SystemExit(f"{flag}: {path} does not exist")
    print(json.dumps(fingerprint(args.code, args.run, args.data_root, args.tokenizer, args.scale), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
