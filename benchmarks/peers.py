"""glam's MoE layer beside its peers at §1's shapes, forward+backward, all interleaved in one run (issue 14).

Every variant is timed round by round with the others, and each ratio is to a dense ReLU FFN of width 2F
(§1's baseline: equal activated FLOPs) timed in the same rounds *in the same process*:

- ``glam-index@1.25``, ``glam-index@2.0``, ``glam-dropless``: glam's ``MoEFFN`` (router, gating, dispatch,
  experts, combine), as in ``moe_layer.py``.
- ``maxtext-cf1.25``, ``maxtext-cf2.0``, ``maxtext-dropless``: MaxText 0.2.5's ``RoutedMoE``, timed by
  ``peer_maxtext.py`` in a side virtualenv (``--maxtext-python``; MaxText needs Python >= 3.12 and a newer
  JAX), which times its own dense baseline in its own JAX as the denominator.
- ``hf-mixtral``: Hugging Face transformers' ``MixtralSparseMoeBlock`` on torch CPU (the optional ``bench``
  extra: ``pip install -e '.[bench]'``), dropless; its ratio is to glam's (JAX) dense baseline.
- ``naive-jax`` (``--naive``): a Python loop over experts, each on every token, masked by its gate: the
  obvious JAX MoE one writes first, E/2 × the activated FLOPs.

MaxText's and Mixtral's experts are gated (three M×F' matrices); F' = 2F/3 gives glam's activated FLOPs.

    .venv/bin/python benchmarks/peers.py --maxtext-python ../maxtext-venv/bin/python --json peers.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile

import jax
import jax.numpy as jnp
from common import add_layer_shape_args, interleaved, write_json
from moe_layer import dense_step, moe_step


def naive_jax(E: int, M: int, F: int):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    w = {
        "router": jax.random.normal(k1, (M, E)) * M**-0.5,
        "w_in": jax.random.normal(k2, (E, M, F)) * M**-0.5,
        "w_out": jax.random.normal(k3, (E, F, M)) * F**-0.5,
    }

    def layer(w, x):  # x [T, M]
        probs = jax.nn.softmax(x @ w["router"], axis=-1)
        top, idx = jax.lax.top_k(probs, 2)
        gate = jnp.sum(jax.nn.one_hot(idx, E) * (top / jnp.sum(top, -1, keepdims=True))[..., None], axis=1)  # [T, E]
        y = jnp.zeros_like(x)
        for e in range(E):
            y = y + gate[:, e : e + 1] * (jax.nn.relu(x @ w["w_in"][e]) @ w["w_out"][e])
        return y

    step = jax.jit(jax.grad(lambda w, x: jnp.mean(jnp.square(layer(w, x))), argnums=(0, 1)))
    return step, w


def hf_mixtral(E: int, M: int, F: int, tokens: int):
    """A thunk for fwd+bwd of transformers' Mixtral sparse MoE block, or None without the extra."""
    try:
        import torch
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = MixtralConfig(hidden_size=M, intermediate_size=2 * F // 3, num_local_experts=E, num_experts_per_tok=2)
    block = MixtralSparseMoeBlock(cfg)
    x = torch.randn(tokens // 1024, 1024, M, requires_grad=True)

    def run():
        out = block(x)
        y = out[0] if isinstance(out, tuple) else out
        y.square().mean().backward()
        return None

    return run


class MaxTextWorker:
    """``peer_maxtext.py`` in the side virtualenv, one variant run per request, so its rounds interleave with ours.

    Its stderr (MaxText logs a lot) goes to a temporary file, whose tail is shown if the worker fails."""

    def __init__(self, python: str, E: int, args):
        if not (os.path.isfile(python) and os.access(python, os.X_OK)):
            raise SystemExit(
                f"error: --maxtext-python {python!r} is not an executable Python; create the MaxText side "
                "virtualenv first (docs/benchmarks.md §4 has the commands), or leave the flag out to skip MaxText"
            )
        here = os.path.dirname(os.path.abspath(__file__))
        cmd = [python, os.path.join(here, "peer_maxtext.py"), "--experts", str(E), "--tokens", str(args.tokens)]
        cmd += ["--d-model", str(args.d_model), "--ffn", str(args.ffn)]
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        ready = self._line()
        if not ready.startswith("{"):
            self._fail("exited before it was ready")
        ready = json.loads(ready)
        self.variants, self.jax = ready["ready"], ready["jax"]

    def _line(self) -> str:
        return self.proc.stdout.readline().strip()

    def _fail(self, what: str) -> None:
        self.proc.kill()
        self.log.seek(0)
        tail = "".join(self.log.readlines()[-15:])
        raise SystemExit(f"error: the MaxText worker {what}; the end of its log:\n{tail}")

    def thunk(self, variant: str):
        def run():
            self.proc.stdin.write(variant + "\n")
            self.proc.stdin.flush()
            if self._line() != "done":
                self._fail(f"stopped while running {variant}")

        return run

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.log.close()


def run(args) -> dict:
    M, F, T = args.d_model, args.ffn, args.tokens
    x = jax.random.normal(jax.random.key(1), (T // 1024, 1024, M))
    rows = []
    maxtext_jax = None
    for E in args.experts:
        dense, w = dense_step(M, F, jnp.float32)
        fns = {"dense": lambda dense=dense, w=w: dense(w, x)}
        for name, dispatch, cf in (
            ("glam-index@1.25", "index", 1.25),
            ("glam-index@2.0", "index", 2.0),
            ("glam-dropless", "dropless", 1.0),
        ):
            step, state = moe_step(E, cf, dispatch, M, F, 1024, jnp.float32)
            fns[name] = lambda step=step, state=state: step(state, x)
        worker = MaxTextWorker(args.maxtext_python, E, args) if args.maxtext_python else None
        if worker is not None:
            maxtext_jax = worker.jax
            for variant in worker.variants:
                fns[f"maxtext-{variant}"] = worker.thunk(variant)
        hf = hf_mixtral(E, M, F, T)
        if hf is not None:
            fns["hf-mixtral"] = hf
        if args.naive:
            naive, nw = naive_jax(E, M, F)
            fns["naive-jax"] = lambda naive=naive, nw=nw: naive(nw, x.reshape(T, M))
        times = interleaved(fns, args.repeats)
        if worker is not None:
            worker.close()
        for name, seconds in times.items():
            base = "maxtext-dense" if name.startswith("maxtext-") else "dense"
            if name in ("dense", "maxtext-dense"):
                continue
            ratio = seconds / times[base]
            rows.append(
                {"experts": E, "impl": name, "seconds": seconds, "dense_seconds": times[base], "ratio_to_dense": ratio}
            )
            print(
                f"E={E:3d} {name:18s} {seconds * 1e3:8.1f} ms  {ratio:.2f}x dense ({times[base] * 1e3:.0f} ms)",
                flush=True,
            )
    return {"benchmark": "peers", "settings": vars(args), "maxtext_jax": maxtext_jax, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_layer_shape_args(p, experts=[8, 16, 64], group=False)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--maxtext-python", help="the MaxText side virtualenv's python (see peer_maxtext.py); omitted: no MaxText"
    )
    p.add_argument("--naive", action="store_true", help="also time the naive JAX loop (slow: 13 s per call at E = 64)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    if args.tokens % 1024:
        p.error(f"--tokens {args.tokens} must be a multiple of 1024 (every variant routes in groups of 1,024 tokens)")
    write_json(args.json, run(args))


if __name__ == "__main__":
    main()
