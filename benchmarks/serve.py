"""``glam serve`` under load: concurrent clients on loopback, batching on (``--max-batch``) against off (1).

The server (``tiny`` with random weights by default, or ``--checkpoint RUN``) runs in this process
on 127.0.0.1; the clients run in a separate process (asyncio + httpx, so they do not share this
process's interpreter lock with the server): ``--clients`` concurrent clients each send ``--requests``
greedy completions of ``--max-tokens`` tokens, prompts of 8–60 words drawn in turn. One untimed
warm-up round per mode compiles its shapes; then the modes alternate for ``--rounds`` timed rounds.
Every answer is checked: the greedy text of a prompt must be the same in both modes (and in every
round). Reported per mode: latency p50/p99 (seconds per request, queueing included), requests/s,
completion tokens/s (summed over clients, wall clock of the round), batches run; and the ratio.

    .venv/bin/python benchmarks/serve.py --clients 32 --requests 4 --json serve.json

Closed-loop clients and the engine's default batching; for Poisson arrivals at several rates, vLLM's
metric set, continuous against static batching and a peer server, see ``benchmarks/serve_load.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time

import numpy as np

WORDS = "the quick brown fox jumps over a lazy dog while seven old birds sing near the quiet river bank".split()


def prompts(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(8, 61)))) for _ in range(n)]


# -- the client process ------------------------------------------------------------------------------------


async def _clients(url: str, texts: list[str], clients: int, requests: int, max_tokens: int) -> dict:
    import httpx

    async def client(i: int, http) -> list[tuple[int, float, str, int]]:
        out = []
        for j in range(requests):
            k = (i * requests + j) % len(texts)
            body = {"prompt": texts[k], "max_tokens": max_tokens, "temperature": 0}
            start = time.perf_counter()
            while (r := await http.post("/v1/completions", json=body)).status_code == 429:
                await asyncio.sleep(float(r.headers.get("retry-after", 1)) / 10)
            r.raise_for_status()
            answer = r.json()
            out.append(
                (k, time.perf_counter() - start, answer["choices"][0]["text"], answer["usage"]["completion_tokens"])
            )
        return out

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        start = time.perf_counter()
        results = await asyncio.gather(*(client(i, http) for i in range(clients)))
        wall = time.perf_counter() - start
    rows = [r for rs in results for r in rs]
    return {"wall_s": wall, "rows": rows}


def run_clients(url: str, args) -> dict:
    cmd = [sys.executable, __file__, "--client-of", url, "--clients", str(args.clients)]
    cmd += ["--requests", str(args.requests), "--max-tokens", str(args.max_tokens), "--prompts", str(args.prompts)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


# -- the server side ---------------------------------------------------------------------------------------


def load_model(args):
    if args.checkpoint:
        from glam.checkpoint import load_for_inference

        return load_for_inference(args.checkpoint)
    import jax

    from glam.config import resolve
    from glam.data.tokenizer import train_tokenizer
    from glam.model.init import init_params

    cfg = resolve(args.preset, args.set)
    text = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 20
    tokenizer = train_tokenizer(text, 320, f"{tempfile.mkdtemp()}/tok.model", num_threads=1)
    return cfg, init_params(cfg, jax.random.key(0)), tokenizer


def summarise(result: dict, batches: int) -> dict:
    latency = np.array([r[1] for r in result["rows"]])
    tokens = sum(r[3] for r in result["rows"])
    return {
        "p50_s": float(np.percentile(latency, 50)),
        "p99_s": float(np.percentile(latency, 99)),
        "requests_per_s": len(latency) / result["wall_s"],
        "completion_tokens_per_s": tokens / result["wall_s"],
        "batches": batches,
        "requests": len(latency),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--set", nargs="*", default=[], help="config overrides (random-weight model)")
    p.add_argument("--checkpoint", default=None, help="serve this run instead of random weights")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=4, help="requests per client")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=16, help="rows per batch with batching on")
    p.add_argument("--prompts", type=int, default=24, help="distinct prompts")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per mode (alternating)")
    p.add_argument("--json", default=None)
    p.add_argument("--client-of", default=None, help=argparse.SUPPRESS)  # internal: be the client process
    args = p.parse_args()
    texts = prompts(args.prompts)
    if args.client_of:
        print(json.dumps(asyncio.run(_clients(args.client_of, texts, args.clients, args.requests, args.max_tokens))))
        return

    from common import write_json

    from glam.serve import background
    from glam.serve.app import create_app
    from glam.serve.engine import Engine

    cfg, params, tokenizer = load_model(args)
    modes = {"batched": args.max_batch, "unbatched": 1}
    figures: dict[str, list[dict]] = {m: [] for m in modes}
    answers: dict[int, str] = {}
    for rnd in range(args.rounds + 1):  # round 0: warm-up (compiles), not reported
        for mode, max_batch in modes.items():
            engine = Engine(cfg, params, tokenizer, max_batch=max_batch, max_queue=max(64, args.clients)).start()
            with background(create_app(engine, model_name="bench")) as url:
                result = run_clients(url, args)
            engine.stop()
            for k, _, text, _ in result["rows"]:
                if answers.setdefault(k, text) != text:
                    raise SystemExit(f"prompt {k}: {mode} round {rnd} answered {text!r}, before {answers[k]!r}")
            if rnd:
                figures[mode].append(summarise(result, engine.batches))
            print(f"round {rnd} {mode}: {summarise(result, engine.batches)}", file=sys.stderr, flush=True)
    median = {m: {k: float(np.median([f[k] for f in fs])) for k in fs[0]} for m, fs in figures.items()}
    ratio = median["batched"]["completion_tokens_per_s"] / median["unbatched"]["completion_tokens_per_s"]
    write_json(
        args.json,
        {
            "benchmark": "serve",
            "config": {k: v for k, v in vars(args).items() if k not in ("json", "client_of")},
            "model": cfg.name,
            "median_over_rounds": median,
            "rounds": figures,
            "throughput_ratio_batched_over_unbatched": ratio,
            "p50_ratio_batched_over_unbatched": median["batched"]["p50_s"] / median["unbatched"]["p50_s"],
            "answers_checked": len(answers),
        },
    )


if __name__ == "__main__":
    main()
