"""Serving under load (issue 24 §3): Poisson arrivals at several rates up to saturation, vLLM's metric set.

Question: how much does a server deliver as requests arrive at random, and how long do they wait?
Each **row** is one server, started here as a subprocess (one at a time) or given by URL:

    glam:NAME:BATCHING   ``glam serve --checkpoint RUN`` (NAME=RUN from --checkpoints), BATCHING one of
                         continuous, static or default (no --batching flag). A server without
                         ``--batching`` (before continuous batching landed) batches statically: its
                         ``static`` row runs without the flag, its ``continuous`` row is skipped (said so).
    hf:FOLDER            ``transformers serve FOLDER --continuous-batching --device cpu`` from the side
                         venv (--hf-bin; FOLDER made by benchmarks/peer_hf_serve.py)
    url:URL              a server already running

**Workload** (seeded, the same for every row): ``--requests`` requests, prompt lengths drawn
log-uniform in ``--prompt-tokens`` (16–512), output lengths log-uniform in ``--output-tokens``
(8–256). Prompts are real text (``--text``, default the Gutenberg books of ../shared/data), each a
window at a random word offset cut to its drawn token count with the first glam server's
``/tokenize`` and ``/detokenize`` (so every row gets the same texts; the workload is saved with the
results). At each rate r of ``--rates`` the requests arrive as a Poisson process (exponential gaps
of mean 1/r, seed per rate; ``inf``: all at once), every one a streamed OpenAI completion
(``stream: true``, ``temperature: 0``, ``max_tokens`` = its drawn output length, ``ignore_eos:
true`` where the server accepts it, detected by a probe, else the row says outputs may end early).
Bounded: arrivals after ``--max-seconds`` are not sent; whatever is unfinished ``--drain-seconds``
later is cut and counted as failed. The clients run in a separate process (asyncio + httpx). Before
the timed rates, two untimed passes of the whole workload (``max_tokens`` 4), one request at a time
and then all at once, compile whatever the server compiles on first use (a warmed-up ``glam serve``
still took seconds on the first prompt of some lengths).

**Metrics** (vLLM's ``benchmark_serving`` definitions, :func:`summarise`): request throughput and
output tokens/s over the rate's wall time (first send to last answer); TTFT (send to the first chunk
with a choice; a bare end marker with no text is not one); TPOT = (latency − TTFT) / (output tokens − 1)
per request with more than one token; ITL = the gaps between successive chunks, pooled over requests;
end-to-end latency; mean, p50, p90, p99 (numpy's linear percentiles); goodput = requests/s meeting
every SLO (``--slo``, default TTFT ≤ 2,000 ms and TPOT ≤ 200 ms). A request whose stream carried no
text (possible with byte pieces) counts as completed, without a TTFT (``no_text_chunks``). Load
average (/proc/loadavg) before and after each row.

    .venv/bin/python benchmarks/serve_load.py --checkpoints tiny=runs/sl/tiny tiny-dense=runs/sl/tiny-dense \\
        --rows glam:tiny:continuous glam:tiny:static glam:tiny-dense:continuous \\
        --rates 2 4 8 inf --json serve_load.json --md serve_load.md

``benchmarks/run_serving.sh`` runs the whole comparison (checkpoints, the HF peer, guidellm).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEXT = ROOT.parent / "shared" / "data" / "corpus" / "books" / "gutenberg"
PERCENTILES = (50, 90, 99)
METRICS = ("ttft", "tpot", "itl", "e2el")

# -- workload ----------------------------------------------------------------------------------------------


def log_uniform(rng: np.random.Generator, low: int, high: int, n: int) -> list[int]:
    """n integers with log-uniform density on [low, high] (rounded)."""
    return [int(round(x)) for x in np.exp(rng.uniform(math.log(low), math.log(high), n))]


def arrivals(rate: float, n: int, seed: int) -> list[float]:
    """Send times (seconds from the start) of a Poisson process of ``rate`` requests/s; inf: all at 0."""
    if math.isinf(rate):
        return [0.0] * n
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, n)
    return [float(t) for t in np.cumsum(gaps) - gaps[0]]  # the first request at 0


def read_words(path: Path) -> list[str]:
    files = sorted(p for p in path.rglob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise SystemExit(f"--text {path}: no .txt files there; give a text file or a folder of them")
    return " ".join(p.read_text("utf-8", errors="replace") for p in files).split()


def make_workload(url: str, args) -> list[dict]:
    """The requests (prompt text, its token count, max_tokens), cut to length with the server's /tokenize."""
    rng = np.random.default_rng(args.seed)
    words = read_words(Path(args.text))
    n = args.requests
    lengths = log_uniform(rng, *args.prompt_tokens, n)
    outputs = log_uniform(rng, *args.output_tokens, n)
    out = []
    for length, max_tokens in zip(lengths, outputs):
        start = int(rng.integers(0, len(words) - 2 * length))
        ids = _post(url, "/tokenize", {"prompt": " ".join(words[start : start + 2 * length])})["tokens"][:length]
        text = _post(url, "/detokenize", {"tokens": ids})["prompt"]
        out.append({"prompt": text, "prompt_tokens": len(ids), "max_tokens": max_tokens})
    return out


# -- metrics -----------------------------------------------------------------------------------------------


def request_metrics(r: dict) -> dict:
    """One answered request's TTFT, TPOT, ITLs and latency (seconds) from its chunk arrival times.

    ``r["chunks"]``: seconds from its send to each streamed chunk that carried a choice; ``r["latency"]``:
    to the end of the stream; ``r["output_tokens"]``: completion tokens (the usage chunk, else chunks).
    """
    chunks, n = r["chunks"], r["output_tokens"]
    return {
        "ttft": chunks[0],
        "tpot": (r["latency"] - chunks[0]) / (n - 1) if n > 1 else None,
        "itl": [b - a for a, b in zip(chunks, chunks[1:])],
        "e2el": r["latency"],
    }


def distribution(values: list[float]) -> dict:
    """mean and p50/p90/p99 in milliseconds (numpy's linear percentiles); None when there are none."""
    if not values:
        return {"mean_ms": None, **{f"p{q}_ms": None for q in PERCENTILES}}
    a = np.asarray(values, float) * 1e3
    return {"mean_ms": float(a.mean()), **{f"p{q}_ms": float(np.percentile(a, q)) for q in PERCENTILES}}


def good(m: dict, slo_ms: dict[str, float]) -> bool:
    """Whether a request meets every SLO (TPOT: only requests with more than one token are held to it)."""
    for key, limit in slo_ms.items():
        value = m[key]
        if value is not None and value * 1e3 > limit:
            return False
    return True


def summarise(results: list[dict], duration: float, slo_ms: dict[str, float]) -> dict:
    """vLLM's serving metrics over one rate's requests (``duration``: first send to last answer, seconds)."""
    ok = [r for r in results if r["ok"]]
    per = [request_metrics(r) for r in ok if r["chunks"]]  # a stream whose text stayed empty has no TTFT
    out_tokens = sum(r["output_tokens"] for r in ok)
    in_tokens = sum(r["prompt_tokens"] for r in ok)
    return {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "duration_s": duration,
        "request_throughput": len(ok) / duration,
        "output_throughput": out_tokens / duration,
        "total_token_throughput": (in_tokens + out_tokens) / duration,
        "output_tokens": out_tokens,
        "short_outputs": sum(r["output_tokens"] < r["max_tokens"] for r in ok),
        "no_text_chunks": sum(not r["chunks"] for r in ok),
        "ttft": distribution([m["ttft"] for m in per]),
        "tpot": distribution([m["tpot"] for m in per if m["tpot"] is not None]),
        "itl": distribution([x for m in per for x in m["itl"]]),
        "e2el": distribution([m["e2el"] for m in per]),
        "goodput": sum(good(m, slo_ms) for m in per) / duration,
        "errors": sorted({r["error"] for r in results if r.get("error")})[:5],
    }


# -- the client process ------------------------------------------------------------------------------------


async def _one(http, body: dict, t0: float) -> dict:
    out = {"ok": False, "chunks": [], "output_tokens": 0, "prompt_tokens": 0, "error": None}
    start = time.perf_counter()
    out["sent_s"] = start - t0
    usage = None
    try:
        async with http.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                out["error"] = f"HTTP {r.status_code}: {(await r.aread()).decode(errors='replace')[:200]}"
                return out
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    out["error"] = str(chunk["error"])[:200]
                    return out
                choices = chunk.get("choices")
                if choices and (choices[0].get("text") or not choices[0].get("finish_reason")):
                    out["chunks"].append(time.perf_counter() - start)  # a token's chunk, not a bare end marker
                if chunk.get("usage"):
                    usage = chunk["usage"]
        out["latency"] = time.perf_counter() - start
    except Exception as exc:  # a refused or cut connection is a failed request, not a failed run
        out["error"] = f"{type(exc).__name__}: {exc}"[:200]
        return out
    out["ok"] = True
    out["output_tokens"] = usage["completion_tokens"] if usage else len(out["chunks"])
    out["prompt_tokens"] = usage["prompt_tokens"] if usage else 0
    return out


async def load(spec: dict) -> dict:
    """Send ``spec["requests"]`` at their ``arrival`` times; answers as :func:`_one` reports them."""
    import httpx

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(spec["max_seconds"] + spec["drain_seconds"] + 60)
    async with httpx.AsyncClient(base_url=spec["url"], timeout=timeout, limits=limits) as http:
        t0 = time.perf_counter()
        if spec.get("sequential"):  # one at a time (the warm-up: each prompt length as a lone newcomer)
            bodies = [{"prompt": r["prompt"], "max_tokens": r["max_tokens"], **spec["body"]} for r in spec["requests"]]
            return {"results": [await _one(http, body, t0) for body in bodies]}
        tasks = []
        for req in spec["requests"]:
            if req["arrival"] > spec["max_seconds"]:
                break
            delay = t0 + req["arrival"] - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = {"prompt": req["prompt"], "max_tokens": req["max_tokens"], **spec["body"]}
            tasks.append(asyncio.create_task(_one(http, body, t0)))
        deadline = t0 + spec["max_seconds"] + spec["drain_seconds"] - time.perf_counter()
        done, pending = await asyncio.wait(tasks, timeout=max(deadline, 1)) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        duration = time.perf_counter() - t0
    rows = []
    for req, task in zip(spec["requests"], tasks):
        r = task.result() if task in done else {"ok": False, "chunks": [], "error": "cut at --drain-seconds"}
        rows.append(
            {**r, "max_tokens": req["max_tokens"], "prompt_tokens": r.get("prompt_tokens") or req["prompt_tokens"]}
        )
    return {"duration_s": duration, "unsent": len(spec["requests"]) - len(tasks), "results": rows}


def run_client(spec: dict) -> dict:
    """Run :func:`load` in a separate Python process (so clients never share the server's interpreter)."""
    cmd = [sys.executable, __file__, "--client"]
    proc = subprocess.run(cmd, input=json.dumps(spec), capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"the client process failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


# -- servers -----------------------------------------------------------------------------------------------


def _post(url: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def glam_serve_flags(glam: str) -> set[str]:
    """The ``--flags`` this glam's ``serve`` accepts (so the script runs before and after they landed)."""
    help_text = subprocess.run([glam, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    return {w.strip("[],") for w in help_text.split() if w.startswith(("--", "[--"))}


class Server:
    """A server subprocess on a free loopback port (or a given URL), stopped on exit."""

    def __init__(self, cmd: list[str] | None, url: str | None = None, log: Path | None = None):
        self.cmd, self.url, self.proc, self.log = cmd, url, None, log

    def __enter__(self) -> Server:
        if self.cmd is None:
            return self
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = [str(c).replace("{port}", str(port)) for c in self.cmd]
        self.logf = open(self.log or os.devnull, "w")  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = Path(self.log).read_text()[-1500:] if self.log else ""
                raise SystemExit(f"the server exited ({self.proc.returncode}): {' '.join(cmd)}\n{tail}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    health = json.loads(r.read() or b"{}")
                if health.get("ready", True):  # glam serve --warmup: ready once its shapes are compiled
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            time.sleep(1)
        self.__exit__()
        raise SystemExit(f"the server did not answer /health within 600 s: {' '.join(cmd)}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.logf.close()
            self.proc = None


def server_for(row: str, args, flags: set[str]) -> tuple[Server | None, str]:
    """(the row's server, a note); None when this server cannot run the row."""
    kind, _, rest = row.partition(":")
    log = Path(args.logs) / f"{row.replace(':', '_').replace('/', '_')}.log" if args.logs else None
    if kind == "url":
        return Server(None, rest), "a running server"
    if kind == "hf":
        cmd = [f"{args.hf_bin}/transformers", "serve", rest, "--continuous-batching", "--device", "cpu"]
        cmd += ["--dtype", "float32", "--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning"]
        # a KV cache of 2,048 blocks of 32 tokens (65,536 tokens): by default it takes 60-90% of free memory
        cmd += ["--cb-block-size", "32", "--cb-num-blocks", str(args.hf_kv_blocks)]
        return Server(cmd, log=log), "transformers serve --continuous-batching, CPU, float32"
    if kind != "glam":
        raise SystemExit(f"--rows {row!r}: a row is glam:NAME:BATCHING, hf:FOLDER or url:URL")
    name, _, batching = rest.partition(":")
    if name not in args.checkpoints:
        raise SystemExit(f"--rows {row!r}: no checkpoint named {name!r}; give it as --checkpoints {name}=RUN_DIR")
    cmd = [args.glam, "serve", "--checkpoint", args.checkpoints[name], "--port", "{port}", "--model-name", name]
    cmd += ["--max-batch", str(args.max_batch), "--max-queue", str(args.max_queue)]
    note = f"--max-batch {args.max_batch}"
    if batching in ("continuous", "static"):
        if "--batching" in flags:
            cmd += ["--batching", batching]
        elif batching == "continuous":
            return None, "skipped: this glam serve has no --batching (its batching is static)"
        else:
            note += ", static (this glam serve has no --batching)"
    elif batching != "default":
        raise SystemExit(f"--rows {row!r}: BATCHING is continuous, static or default")
    if "--warmup" in flags:
        cmd.append("--warmup" if args.warmup else "--no-warmup")
    if args.prefill_chunk and "--prefill-chunk" in flags:
        cmd += ["--prefill-chunk", str(args.prefill_chunk)]
        note += f", --prefill-chunk {args.prefill_chunk}"
    return Server(cmd, log=log), note


def probe_body(url: str, model: str | None) -> tuple[dict, bool]:
    """The request fields every timed request carries; whether the server takes ``ignore_eos``."""
    base = {"temperature": 0} | ({"model": model} if model else {})
    try:
        _post(url, "/v1/completions", {**base, "prompt": "a", "max_tokens": 1, "ignore_eos": True})
        taken = True
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        if exc.code not in (400, 422) or "ignore_eos" not in detail:  # glam: 400 naming it; transformers: 422
            raise SystemExit(f"{url}: the probe completion failed with HTTP {exc.code}: {detail}") from None
        taken = False
    body = {**base, "stream": True, "stream_options": {"include_usage": True}}
    return ({**body, "ignore_eos": True} if taken else body), taken


# -- the run -----------------------------------------------------------------------------------------------


def run_row(row: str, args, flags: set[str], workload: list[dict] | None) -> tuple[dict, list[dict] | None]:
    server, note = server_for(row, args, flags)
    if server is None:
        print(f"{row}: {note}", file=sys.stderr, flush=True)
        return {"row": row, "note": note, "rates": []}, workload
    before = loadavg()
    with server:
        if workload is None:
            workload = make_workload(server.url, args)
        model = None if row.startswith("glam:") else _served_model(server.url)
        body, ignore_eos = probe_body(server.url, model)
        spec = {"url": server.url, "body": body, "max_seconds": args.max_seconds, "drain_seconds": args.drain_seconds}
        warm = [{**w, "max_tokens": 4, "arrival": 0.0} for w in workload]
        run_client({**spec, "requests": warm, "sequential": True})  # untimed: whatever --warmup left to compile,
        run_client({**spec, "requests": warm})  # for lone newcomers and for a burst of them
        rates = []
        for i, rate in enumerate(args.rates):
            times = arrivals(rate, len(workload), args.seed + 1 + i)
            reqs = [{**w, "arrival": t} for w, t in zip(workload, times)]
            got = run_client({**spec, "requests": reqs})
            s = summarise(got["results"], got["duration_s"], args.slo)
            rates.append({"rate": rate, "unsent": got["unsent"], **s})
            print(f"{row} rate {rate}: {s['request_throughput']:.2f} req/s, {s['output_throughput']:.0f} tok/s, "
                  f"TTFT p99 {s['ttft']['p99_ms']} ms, failed {s['failed']}", file=sys.stderr, flush=True)  # fmt: skip
    after = loadavg()
    extra = "" if ignore_eos else "; no ignore_eos (outputs may end early at eos: see short_outputs)"
    if row.startswith("hf:") and not ignore_eos:
        extra = "; eos off in its generation_config.json (peer_hf_serve.py), so every answer runs to max_tokens"
    return {"row": row, "note": note + extra, "ignore_eos": ignore_eos, "load_before": before, "load_after": after,
            "rates": rates}, workload  # fmt: skip


def _served_model(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url + "/v1/models", timeout=30) as r:
            data = json.loads(r.read()).get("data") or []
        return data[0]["id"] if data else None
    except (urllib.error.URLError, KeyError, json.JSONDecodeError):
        return None


def comparisons(rows: list[dict]) -> list[dict]:
    """Ratios of output tokens/s and p99 TTFT between rows at every common rate (first ÷ second)."""
    by = {r["row"]: {x["rate"]: x for x in r["rates"]} for r in rows if r["rates"]}
    glam = [r for r in by if r.startswith("glam:")]
    pairs = [
        (a, b) for a in glam for b in glam if a.endswith(":continuous") and b == a[: -len("continuous")] + "static"
    ]
    cont = [r for r in glam if r.endswith(":continuous")]
    pairs += [(a, b) for a in cont[:1] for b in cont[1:]]  # the first model against the others
    pairs += [(a, b) for a in cont[:1] for b in by if b.startswith(("hf:", "url:"))]
    out = []
    for a, b in pairs:
        for rate in by[a]:
            if rate in by[b]:
                x, y = by[a][rate], by[b][rate]
                ttft = (
                    (x["ttft"]["p99_ms"] / y["ttft"]["p99_ms"]) if x["ttft"]["p99_ms"] and y["ttft"]["p99_ms"] else None
                )
                out.append({"a": a, "b": b, "rate": rate, "output_throughput_ratio":
                            x["output_throughput"] / y["output_throughput"] if y["output_throughput"] else None,
                            "p99_ttft_ratio": ttft})  # fmt: skip
    return out


def _f(x, fmt="{:,.0f}") -> str:
    return "–" if x is None else fmt.format(x)


def markdown(result: dict) -> str:
    head = ("| row | rate (req/s) | done / failed | req/s | output tok/s | TTFT p50 / p90 / p99 ms | TPOT p50 / p99 ms "
            "| ITL p50 / p99 ms | E2E p50 / p99 ms | goodput req/s | load before → after |")  # fmt: skip
    lines = [head, "|" + "---|" * 11]
    for row in result["rows"]:
        if not row["rates"]:
            lines.append(f"| {row['row']} | {row['note']} |" + " |" * 9)
        for r in row["rates"]:
            t, p, i, e = (r[k] for k in METRICS)
            lines.append(
                f"| {row['row']} | {r['rate']} | {r['completed']} / {r['failed'] + r['unsent']} | "
                f"{r['request_throughput']:.2f} | {r['output_throughput']:,.0f} | "
                f"{_f(t['p50_ms'])} / {_f(t['p90_ms'])} / {_f(t['p99_ms'])} | {_f(p['p50_ms'], '{:.1f}')} / "
                f"{_f(p['p99_ms'], '{:.1f}')} | {_f(i['p50_ms'], '{:.1f}')} / {_f(i['p99_ms'], '{:.1f}')} | "
                f"{_f(e['p50_ms'])} / {_f(e['p99_ms'])} | {r['goodput']:.2f} | "
                f"{row['load_before'][0]:.2f} → {row['load_after'][0]:.2f} |"
            )
    lines += ["", "| A | B | rate | output tok/s A ÷ B | p99 TTFT A ÷ B |", "|---|---|---|---|---|"]
    for c in result["comparisons"]:
        lines.append(
            f"| {c['a']} | {c['b']} | {c['rate']} | {_f(c['output_throughput_ratio'], '{:.2f}')} | "
            f"{_f(c['p99_ttft_ratio'], '{:.2f}')} |"
        )
    notes = [f"- {r['row']}: {r['note']}" for r in result["rows"]]
    return "\n".join(lines + ["", *notes]) + "\n"


def mixtral_shape(preset: str, overrides: list[str]) -> dict:
    """The ``MixtralForCausalLM`` of ``preset``'s activated size (benchmarks/peer_hf_serve.py explains the match)."""
    from glam.config import resolve
    from glam.model.flops import model_size

    cfg = resolve(preset, overrides)
    m, k = cfg.model, cfg.moe.causal_top_k
    c = 3 if m.expert_activation == "geglu" else 2
    per_pair = 3 * m.ffn_dim + k * c * (cfg.moe.expert_dim or m.ffn_dim)  # activated FFN width per pair, × M
    return {
        "vocab_size": m.vocab_size, "d_model": m.d_model, "num_layers": m.num_layers, "num_heads": m.num_heads,
        "head_dim": m.head_dim, "max_seq_len": m.max_seq_len, "num_experts": cfg.moe.num_experts, "top_k": k,
        "expert_ffn": per_pair // (2 * k * 3), "glam_preset": cfg.name,
        "glam_params_activated": model_size(cfg).params_activated,
    }  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", default=["glam:tiny:continuous", "glam:tiny:static"])
    p.add_argument("--checkpoints", nargs="*", default=[], metavar="NAME=RUN_DIR", help="glam runs the rows name")
    p.add_argument("--rates", type=float, nargs="+", default=[2.0, 4.0, 8.0, math.inf], help="requests/s; inf: burst")
    p.add_argument("--requests", type=int, default=48, help="requests per rate (the same prompts at every rate)")
    p.add_argument("--prompt-tokens", type=int, nargs=2, default=[16, 512], metavar=("MIN", "MAX"))
    p.add_argument("--output-tokens", type=int, nargs=2, default=[8, 256], metavar=("MIN", "MAX"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text", default=str(DEFAULT_TEXT), help="a text file or folder of .txt files for the prompts")
    p.add_argument("--workload", default=None, help="reuse this saved workload (JSON list) instead of drawing one")
    p.add_argument("--max-seconds", type=float, default=60.0, help="no arrivals after this, per rate")
    p.add_argument("--drain-seconds", type=float, default=120.0, help="then this long for the last answers")
    p.add_argument(
        "--slo", nargs="*", default=["ttft=2000", "tpot=200"], help="METRIC=MS for goodput (ttft, tpot, e2el)"
    )
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-queue", type=int, default=512, help="high, so requests queue in the engine, not as 429s")
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                   help="glam serve --warmup: compile every serving shape before /health says ready")  # fmt: skip
    p.add_argument("--prefill-chunk", type=int, default=0, help="glam serve --prefill-chunk (where it exists)")
    p.add_argument("--glam", default=str(Path(sys.executable).with_name("glam")), help="the glam executable")
    p.add_argument("--hf-bin", default=os.environ.get("HF_VENV_BIN", "/work/sidevenv-bench/bin"))
    p.add_argument("--hf-kv-blocks", type=int, default=2048, help="transformers serve --cb-num-blocks (32 tokens each)")
    p.add_argument("--logs", default=None, help="folder for the servers' logs")
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    p.add_argument("--mixtral-shape", metavar="PRESET", help="print the HF peer's shape for PRESET (--set) and exit")
    p.add_argument("--set", nargs="*", default=["model.max_seq_len=1024"], help="overrides for --mixtral-shape")
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)  # internal: be the client process
    args = p.parse_args(argv)
    try:
        args.checkpoints = dict(c.split("=", 1) for c in args.checkpoints)
        args.slo = {k: float(v) for k, v in (s.split("=", 1) for s in args.slo)}
    except ValueError:
        p.error("--checkpoints takes NAME=RUN_DIR and --slo METRIC=MS (e.g. ttft=2000)")
    if set(args.slo) - set(METRICS) - {"itl"} or "itl" in args.slo:
        p.error(f"--slo: metrics are ttft, tpot, e2el (got {', '.join(args.slo)})")
    lo, hi = args.prompt_tokens
    if not 1 <= lo <= hi or not 1 <= args.output_tokens[0] <= args.output_tokens[1]:
        p.error("--prompt-tokens and --output-tokens take MIN MAX with 1 <= MIN <= MAX")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.client:
        print(json.dumps(asyncio.run(load(json.load(sys.stdin)))))
        return
    if args.mixtral_shape:
        print(json.dumps(mixtral_shape(args.mixtral_shape, args.set)))
        return
    if args.logs:
        os.makedirs(args.logs, exist_ok=True)
    flags = glam_serve_flags(args.glam) if any(r.startswith("glam:") for r in args.rows) else set()
    workload = json.loads(Path(args.workload).read_text()) if args.workload else None
    rows = []
    for row in args.rows:
        result, workload = run_row(row, args, flags, workload)
        rows.append(result)
    result = {
        "benchmark": "serve_load",
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "md", "client")},
        "glam_serve_flags": sorted(flags),
        "rows": rows,
        "comparisons": comparisons(rows),
        "workload": workload,
    }
    text = markdown(result)
    print(text)
    if args.md:
        Path(args.md).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
