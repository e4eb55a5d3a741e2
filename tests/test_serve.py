"""``glam serve`` against real clients: the openai package, lm-eval's local-completions, raw HTTP, a load test.

One server (a tiny random MoE model, batches of 4) runs on 127.0.0.1 for the whole module.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import httpx
import jax
import pytest
from lm_eval_tasks import COPA_LM_EVAL, copa_rows

from glam.config import resolve
from glam.data.tokenizer import train_tokenizer
from glam.inference import GLaMLanguageModel, generate
from glam.model.init import init_params
from glam.serve import background
from glam.serve.app import create_app
from glam.serve.engine import Engine

openai = pytest.importorskip("openai")

CFG = resolve(
    "tiny",
    [
        "train.seq_len=32",
        "model.max_seq_len=128",
        "model.vocab_size=512",
        "model.d_model=64",
        "model.num_heads=2",
        "model.head_dim=16",
        "model.ffn_dim=128",
        "model.num_layers=2",
        "moe.num_experts=4",
        "moe.eval_no_drop=true",
    ],
)
TEXT = [
    f"The {a} {b} walks to the {c} and sees {n} birds.\nQ: Where?\nA: the {c}."
    for a in ("quick", "lazy", "old", "young")
    for b in ("fox", "dog", "cat", "horse")
    for c, n in (("river", 3), ("market", 12), ("garden", 7))
]
PROMPTS = ["The quick fox", "A:", "The old horse walks", "Q: Where?", "The lazy dog sees", "the"]
SHARED_COPA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tasks" / "copa" / "val.jsonl"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tokenizer = train_tokenizer(TEXT, 320, str(tmp_path_factory.mktemp("tok") / "tok.model"), num_threads=1)
    return CFG, init_params(CFG, jax.random.key(0)), tokenizer


@pytest.fixture(scope="module")
def server(model):
    engine = Engine(*model, max_batch=4, max_queue=8).start()
    with background(create_app(engine, model_name="tiny", max_body_bytes=64 << 10)) as url:
        yield url, engine
    engine.stop()


def _greedy(model, prompt, n):
    cfg, params, tok = model
    return generate(cfg, params, tok, [prompt], max_tokens=n)[0]


def test_openai_client_greedy_equals_generate_and_streams_the_same(model, server):
    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    out = client.completions.create(model="tiny", prompt=PROMPTS[:3], max_tokens=6, temperature=0)
    assert [c.index for c in out.choices] == [0, 1, 2]
    for prompt, choice in zip(PROMPTS, out.choices):
        ref = _greedy(model, prompt, 6)
        assert choice.text == ref.text and choice.finish_reason == (
            "length" if ref.finish_reason == "length" else "stop"
        )
    tok = model[2]
    assert out.usage.prompt_tokens == sum(1 + len(tok.encode(p)) for p in PROMPTS[:3])
    chunks = list(client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=6, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == out.choices[0].text
    assert chunks[-1].choices[0].finish_reason == out.choices[0].finish_reason
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_stop_strings_seed_and_n(model, server):
    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    free = _greedy(model, PROMPTS[2], 8).text
    stop = free[2:4]
    out = client.completions.create(model="tiny", prompt=PROMPTS[2], max_tokens=8, temperature=0, stop=[stop])
    assert out.choices[0].text == free[: free.find(stop)] and out.choices[0].finish_reason == "stop"
    kw = dict(model="tiny", prompt=PROMPTS[1], max_tokens=8, temperature=1.0, top_p=0.9, n=3, seed=11)
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]  # a seed reproduces
    assert len({c.text for c in a.choices}) > 1  # the choices of one request differ


def test_echo_logprobs_equal_glam_scoring(model, server):
    url, _ = server
    cfg, params, tok = model
    context, continuation = "The quick fox walks", " to the river"
    body = {"prompt": context + continuation, "max_tokens": 1, "temperature": 0, "logprobs": 2, "echo": True}
    choice = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()["choices"][0]
    lp = choice["logprobs"]
    ids = tok.encode(context + continuation)
    assert len(lp["token_logprobs"]) == len(ids) + 1 and choice["text"].startswith(context + continuation)
    n_ctx = len(tok.encode(context))
    [(ll, greedy, n)] = GLaMLanguageModel(cfg, params, tok).loglikelihood([(context, continuation)])
    assert n == len(ids) - n_ctx
    assert sum(lp["token_logprobs"][n_ctx:-1]) == pytest.approx(ll, abs=1e-4)
    flags = [t == max(top.values()) for t, top in zip(lp["token_logprobs"][n_ctx:-1], lp["top_logprobs"][n_ctx:-1])]
    assert all(flags) == greedy and all(len(top) <= 2 for top in lp["top_logprobs"])
    # a token-id prompt that gives its own bos: that bos is reported with a null log-prob
    body = {"prompt": [tok.bos_id, *ids], "max_tokens": 1, "temperature": 0, "logprobs": 0, "echo": True}
    lp2 = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()["choices"][0]["logprobs"]
    assert lp2["token_logprobs"][0] is None and lp2["token_logprobs"][1:] == pytest.approx(lp["token_logprobs"])


BIG = 1099511627776  # 2**40: over int32, as the probe that failed a whole batch sent it


@pytest.mark.parametrize(
    "body, status, param",
    [
        (b"{not json", 400, "body"),
        (b"[1, 2]", 400, None),
        (json.dumps({"max_tokens": 3}).encode(), 400, "prompt"),
        (json.dumps({"prompt": "x", "max_tokens": -1}).encode(), 400, "max_tokens"),
        (json.dumps({"prompt": "x", "max_tokens": "3"}).encode(), 400, "max_tokens"),
        (json.dumps({"prompt": "x", "max_tokens": BIG}).encode(), 400, "max_tokens"),
        (json.dumps({"prompt": "x", "temperature": True}).encode(), 400, "temperature"),
        (b'{"prompt": "x", "temperature": NaN}', 400, "body"),
        (b'{"prompt": "x", "top_p": 1e999}', 400, "top_p"),
        (json.dumps({"prompt": "x", "top_k": BIG}).encode(), 400, "top_k"),
        (json.dumps({"prompt": "x", "seed": -1}).encode(), 400, "seed"),
        (json.dumps({"prompt": "x", "seed": 2**64}).encode(), 400, "seed"),
        (json.dumps({"prompt": "x", "n": 17}).encode(), 400, "n"),
        (json.dumps({"prompt": "x", "logprobs": 6}).encode(), 400, "logprobs"),
        (json.dumps({"prompt": "x", "min_tokens": 5, "max_tokens": 4}).encode(), 400, "min_tokens"),
        (json.dumps({"prompt": "x", "min_tokens": BIG}).encode(), 400, "min_tokens"),
        (json.dumps({"prompt": "x", "ignore_eos": "yes"}).encode(), 400, "ignore_eos"),
        (json.dumps({"prompt": "x", "beam_sise": 4}).encode(), 400, "beam_sise"),
        (json.dumps({"prompt": "x", "presence_penalty": 0.5}).encode(), 400, "presence_penalty"),
        (json.dumps({"prompt": "x", "stream": True, "stream_options": {"include_usage": True, "x": 1}}).encode(),
         400, "stream_options.x"),
        (json.dumps({"prompt": "x", "stream_options": {"include_usage": True}}).encode(), 400, "stream_options"),
        (json.dumps({"prompt": [1, "a"]}).encode(), 400, "prompt"),
        (json.dumps({"prompt": [5, 99999]}).encode(), 400, "prompt"),
        (json.dumps({"prompt": "the " * 150}).encode(), 400, "prompt"),
        (json.dumps({"prompt": "x", "max_tokens": 127}).encode(), 400, "max_tokens"),
        (json.dumps({"prompt": "x", "model": "gpt-4"}).encode(), 400, "model"),
        (b'{"prompt": "\\ud800abc"}', 400, "prompt"),  # a lone surrogate: valid JSON, not Unicode text
        (b'{"prompt": ["ok", "\\udfff"]}', 400, "prompt.1"),
        (b"[" * 3000 + b"]" * 3000, 400, "body"),  # RecursionError in json.loads
        (b'{"prompt": ' + b"[" * 40 + b"]" * 40 + b"}", 400, "body"),
        (json.dumps({"prompt": "x" * (70 << 10)}).encode(), 413, "body"),
    ],
)  # fmt: skip
def test_bad_requests_get_a_4xx_naming_the_field(server, body, status, param):
    url, engine = server
    r = httpx.post(f"{url}/v1/completions", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"] == "invalid_request_error"
    assert _in_flight(url) == 0


@pytest.mark.parametrize(
    "route, body, headers, status, param",
    [
        ("/v1/completions", b'{"prompt": "x"}', {"content-type": "text/plain"}, 415, "content-type"),
        ("/v1/completions", b"prompt=x", {"content-type": "application/x-www-form-urlencoded"}, 415, "content-type"),
        ("/tokenize", b'{"prompt": "\\ud800abc"}', {"content-type": "application/json"}, 400, "prompt"),
        ("/tokenize", b"[" * 3000 + b"]" * 3000, {"content-type": "application/json"}, 400, "body"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
         {"content-type": "application/json"}, 400, "messages.0.content"),
        ("/v1/chat/completions", json.dumps({"messages": []}).encode(), {}, 400, "messages"),
        ("/v1/chat/completions", json.dumps({"messages": [{"role": "tool", "content": "x"}]}).encode(), {}, 400,
         "messages.0.role"),
        ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "x"}], "tools": []}).encode(),
         {}, 400, "tools"),
        ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})
         .encode(), {}, 400, "top_logprobs"),
        ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "the " * 130}]}).encode(), {},
         400, "messages"),
    ],
)  # fmt: skip
def test_hostile_bodies_on_every_route_get_a_4xx(server, route, body, headers, status, param):
    url, _ = server
    r = httpx.post(f"{url}{route}", content=body, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param, r.text
    assert _in_flight(url) == 0


def test_a_bad_request_among_good_ones_fails_alone(model, server):
    """While a long request runs, three good requests and one with top_k = 2**40 arrive together:
    the bad one gets a 400 naming top_k, the good ones their right answers (issue 23: all four got 500)."""
    url, engine = server
    expected = {p: _greedy(model, p, 6).text for p in PROMPTS[:3]}

    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            long = {"prompt": PROMPTS[4], "max_tokens": 100, "temperature": 0, "ignore_eos": True}
            first = asyncio.create_task(http.post("/v1/completions", json=long))
            while engine.stats()["running_rows"] == 0:
                await asyncio.sleep(0.01)
            bodies = [{"prompt": p, "max_tokens": 6, "temperature": 0} for p in PROMPTS[:3]]
            bodies.insert(1, {"prompt": PROMPTS[0], "max_tokens": 6, "temperature": 1.0, "top_k": BIG})
            return await first, await asyncio.gather(*(http.post("/v1/completions", json=b) for b in bodies))

    first, (a, bad, b, c) = asyncio.run(main())
    assert first.status_code == 200 and first.json()["usage"]["completion_tokens"] == 100
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_k"
    for r, prompt in zip((a, b, c), PROMPTS[:3]):
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == expected[prompt]


def _wait_until(condition, timeout_s):
    """Seconds until ``condition()`` held (polled every 10 ms), or None after ``timeout_s``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if condition():
            return time.monotonic() - t0
        time.sleep(0.01)
    return None


def _idle(engine):
    s = engine.stats()
    return engine.in_flight == 0 and s["running_rows"] == 0 and s["waiting_rows"] == 0


def test_busy_server_answers_429(server):
    url, engine = server
    for _ in range(engine.max_queue):
        engine.admit()
    try:
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=30)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "rate_limit_error"
    finally:
        for _ in range(engine.max_queue):
            engine.release()


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_disconnects_frees_its_rows_within_a_second(server, stream):
    """64 rows of 100 tokens (16 rounds of 4 slots, many seconds of work); the client's socket closes
    once its rows run: within a second nothing of it is admitted, running or waiting, and no more
    tokens are generated. Non-streaming, this was not noticed for 56 s (issue 23)."""
    url, engine = server
    body = {"prompt": PROMPTS[:4], "n": 16, "max_tokens": 100, "temperature": 1.0, "ignore_eos": True, "stream": stream}
    warm = httpx.post(f"{url}/v1/completions", json={**body, "n": 1, "max_tokens": 2, "stream": False}, timeout=120)
    assert warm.status_code == 200  # the same shapes compiled first: the second below is a warm server's
    raw = json.dumps(body).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        head = f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        sock.sendall(head.encode() + f"Content-Length: {len(raw)}\r\n\r\n".encode() + raw)
        assert _wait_until(lambda: engine.stats()["running_rows"] > 0, 60) is not None
        if stream:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    freed = _wait_until(lambda: _idle(engine), 5)
    assert freed is not None and freed < 1.0, (freed, engine.stats(), engine.in_flight)
    generated = engine.stats()["generated_tokens"]
    time.sleep(0.2)
    assert engine.stats()["generated_tokens"] == generated  # its rows do no more work


def _in_flight(url):
    return httpx.get(f"{url}/health", timeout=60).json()["requests_in_flight"]


def test_concurrent_clients_are_batched_and_each_gets_its_own_answer(model, server):
    """A bounded load test: 16 clients × 2 requests on loopback, every answer checked (figures: benchmarks/serve.py)."""
    url, engine = server
    expected = {p: _greedy(model, p, 8).text for p in PROMPTS}
    occupancy = []
    engine.on_step, on_step = lambda live, slots: occupancy.append(live), engine.on_step

    def body(prompt):
        return {"prompt": prompt, "max_tokens": 8, "temperature": 0}

    async def client(i, http):
        for j in range(2):
            prompt = PROMPTS[(i + j) % len(PROMPTS)]
            while (r := await http.post("/v1/completions", json=body(prompt))).status_code == 429:
                await asyncio.sleep(0.05)  # the bound (max_queue=8) holds: over it, retry
            assert r.status_code == 200 and r.json()["choices"][0]["text"] == expected[prompt], (prompt, r.text)

    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            await asyncio.gather(*(client(i, http) for i in range(16)))

    try:
        asyncio.run(main())
    finally:
        engine.on_step = on_step
    assert max(occupancy) == engine.max_batch  # requests shared batches: some steps ran every slot


@pytest.mark.slow
def test_lm_eval_local_completions_through_the_server_equals_glam_eval(model, server, tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    from glam.evals import evaluate

    url, _ = server
    rows = copa_rows(SHARED_COPA.parents[1], 24, fallback=4)
    data = tmp_path / "data" / "copa" / "val.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text("\n".join(rows) + "\n")
    ours = evaluate(GLaMLanguageModel(*model), "copa", data_root=tmp_path / "data")["tasks"]["copa"]["value"]

    for var, value in (("HF_DATASETS_OFFLINE", "1"), ("HF_HUB_OFFLINE", "1"), ("HF_HOME", str(tmp_path / "hf"))):
        monkeypatch.setenv(var, value)
    tasks = tmp_path / "lm_eval_tasks"
    tasks.mkdir()
    (tasks / "serve_copa.yaml").write_text(COPA_LM_EVAL.format(data=data, name="serve_copa"))
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=f"model=tiny,base_url={url}/v1/completions,max_length=127,batch_size=4,tokenizer_backend=remote",
        tasks=["serve_copa"],
        task_manager=TaskManager(include_path=str(tasks)),
        num_fewshot=0,
        bootstrap_iters=0,
    )
    print("lm-eval via glam serve:", out["results"]["serve_copa"]["acc,none"], "glam eval:", ours)
    assert out["results"]["serve_copa"]["acc,none"] == pytest.approx(ours)
