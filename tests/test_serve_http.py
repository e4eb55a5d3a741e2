"""``glam serve`` as people run it: chat completions, API keys, /metrics, ignore_eos / min_tokens, the
command line (port checks, warnings) and a real ``glam serve`` process drained by SIGTERM.

In-process servers share test_serve's tiny model; the subprocess tests serve a run directory written
from the same parameters (no training).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import jax
import jax.numpy as jnp
import pytest
import test_serve
from prometheus_client.parser import text_string_to_metric_families
from test_serve import PROMPTS, _greedy

from glam.cli.main import main
from glam.serve import background
from glam.serve.app import create_app
from glam.serve.chat import DEFAULT_STOP, ChatTemplate
from glam.serve.engine import Engine

openai = pytest.importorskip("openai")
model, server = test_serve.model, test_serve.server  # the same fixtures (instances of this module's own)


def _chat_prompt(messages):
    """The default template by hand (docs/serving.md): what the model is asked to continue."""
    roles = {"system": "{}\n\n", "user": "User: {}\n", "assistant": "Assistant: {}\n"}
    return "".join(roles[m["role"]].format(m["content"]) for m in messages) + "Assistant:"


def test_chat_completions_with_the_openai_client(model, server):
    url, engine = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Where does the fox walk?"},
        {"role": "assistant", "content": "To the river."},
        {"role": "user", "content": [{"type": "text", "text": "And the dog?"}]},
    ]
    flat = [{**m, "content": m["content"] if isinstance(m["content"], str) else "And the dog?"} for m in messages]
    prompt = _chat_prompt(flat)
    ref = _greedy(model, prompt, 8)
    expected = ref.text.split(DEFAULT_STOP[0])[0]
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
    [choice] = out.choices
    assert choice.message.role == "assistant" and choice.message.content == expected
    assert choice.finish_reason == (
        "stop" if DEFAULT_STOP[0] in ref.text or ref.finish_reason != "length" else "length"
    )
    assert out.usage.prompt_tokens == 1 + len(model[2].encode(prompt))
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == out.usage.completion_tokens
    # logprobs: the generated tokens' log-probs and alternatives, in the chat shape
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, temperature=0, logprobs=True,
                                         top_logprobs=2)  # fmt: skip
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    assert all(t.logprob == pytest.approx(max(a.logprob for a in t.top_logprobs)) for t in content)  # greedy
    # a template file replaces the default: here the last message alone, so the reply equals /v1/completions'
    app = create_app(engine, model_name="tiny", chat_template=ChatTemplate("{{ messages[-1]['content'] }}"))
    with background(app) as other:
        answer = httpx.post(f"{other}/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": PROMPTS[2]}], "max_tokens": 6, "temperature": 0, "n": 2,
        }).json()  # fmt: skip
    assert [c["message"]["content"] for c in answer["choices"]] == [_greedy(model, PROMPTS[2], 6).text] * 2


def test_api_key_guards_every_route_but_health(server):
    _, engine = server
    with background(create_app(engine, model_name="tiny", api_key="s3cret")) as url:
        good = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret")
        assert good.completions.create(model="tiny", prompt="x", max_tokens=2, temperature=0).choices[0].text
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="s3cre").completions.create(model="tiny", prompt="x")
        for method, path in [("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/tokenize"),
                             ("POST", "/v1/chat/completions"), ("GET", "/nowhere")]:  # fmt: skip
            r = httpx.request(method, f"{url}{path}", json={}, timeout=30)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, r.text)
            assert r.json()["error"]["code"] == "invalid_api_key"
        wrong = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer s3cretX"}, timeout=30)
        assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "invalid API key"
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200
        ok = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer s3cret"}, timeout=30)
        assert ok.status_code == 200 and "glam_requests_total" in ok.text


def _scrape(url) -> dict[str, float]:
    """``/metrics`` as {sample name with its labels: value}."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "le")
            le = s.labels.get("le")
            out[s.name + (f"{{{labels}}}" if labels else "") + (f"[le={le}]" if le else "")] = s.value
    return out


def test_metrics_count_requests_tokens_and_latencies(server):
    _, engine = server
    with background(create_app(engine, model_name="tiny")) as url:
        bodies = [{"prompt": p, "max_tokens": 5, "temperature": 0, "ignore_eos": True} for p in PROMPTS[:3]]
        usages = [httpx.post(f"{url}/v1/completions", json=b, timeout=60).json()["usage"] for b in bodies]
        stream = {"prompt": PROMPTS[3], "max_tokens": 3, "temperature": 0, "stream": True, "ignore_eos": True}
        assert httpx.post(f"{url}/v1/completions", json=stream, timeout=60).text.endswith("data: [DONE]\n\n")
        assert httpx.post(f"{url}/v1/completions", json={"prompt": "x", "top_k": -2}, timeout=60).status_code == 400
        m = _scrape(url)
    assert m["glam_requests_total{route=/v1/completions,status=200}"] == 4
    assert m["glam_requests_total{route=/v1/completions,status=400}"] == 1
    prompt_tokens = sum(u["prompt_tokens"] for u in usages) + 1 + len(engine.tokenizer.encode(PROMPTS[3]))
    assert m["glam_prompt_tokens_total"] == prompt_tokens
    assert m["glam_generation_tokens_total"] == 5 * 3 + 3
    for name in ("glam_time_to_first_token_seconds", "glam_time_per_output_token_seconds",
                 "glam_e2e_request_latency_seconds"):  # fmt: skip
        assert m[f"{name}_count"] == 4 and m[f"{name}_sum"] > 0
    assert m["glam_slots"] == engine.max_batch and m["glam_queue_depth"] == 0 and m["glam_running_rows"] == 0
    assert m["glam_batch_occupancy_count"] >= 5  # a step per token at least (rows of one request share steps)
    assert m["glam_batch_occupancy_bucket[le=1.0]"] == m["glam_batch_occupancy_count"]


@pytest.fixture(scope="module")
def eos_server(model):
    """The same model with eos's embedding row scaled by -30: its greedy next token is eos after most
    prompts (PROMPTS[0] among them), so eos, ignore_eos and min_tokens can be seen at work."""
    cfg, params, tok = model
    params = jax.tree.map(lambda a: a, params)
    params["embed"]["embedding"] = params["embed"]["embedding"].at[tok.eos_id].multiply(-30.0)
    engine = Engine(cfg, params, tok, max_batch=4, max_queue=8).start()
    with background(create_app(engine, model_name="tiny")) as url:
        yield url, engine
    engine.stop()


def test_ignore_eos_and_min_tokens_with_the_openai_client(eos_server):
    url, engine = eos_server
    eos = engine.piece(engine.tokenizer.eos_id)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    kw = dict(model="tiny", prompt=PROMPTS[0], max_tokens=6, temperature=0, logprobs=2)
    plain = client.completions.create(**kw)
    assert plain.choices[0].finish_reason == "stop" and plain.choices[0].logprobs.tokens == [eos]
    assert plain.usage.completion_tokens == 1  # the eos is reported and counted (vLLM, lm-eval)
    ignored = client.completions.create(**kw, extra_body={"ignore_eos": True})
    assert ignored.choices[0].finish_reason == "length" and ignored.usage.completion_tokens == 6
    assert ignored.choices[0].logprobs.tokens[0] == eos  # eos is an ordinary token then
    held = client.completions.create(**kw, extra_body={"min_tokens": 3})
    tokens, tops = held.choices[0].logprobs.tokens, held.choices[0].logprobs.top_logprobs
    assert held.usage.completion_tokens >= 3 and eos not in tokens[:3]
    for token, top in zip(tokens[:3], tops[:3]):  # greedy with eos masked: the likeliest other token
        assert token == max((p for p in top if p != eos), key=top.get)
    # streaming with usage in every chunk (vLLM's continuous_usage_stats): completion tokens so far
    body = {"prompt": PROMPTS[0], "max_tokens": 4, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"continuous_usage_stats": True}}  # fmt: skip
    lines = httpx.post(f"{url}/v1/completions", json=body, timeout=60).text.split("\n\n")
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert [c["usage"]["completion_tokens"] for c in chunks] == [1, 2, 3, 4]
    assert all(
        c["usage"]["total_tokens"] == c["usage"]["prompt_tokens"] + c["usage"]["completion_tokens"] for c in chunks
    )


def test_health_says_warming_up_until_the_engine_is_ready(model):
    engine = Engine(*model, max_batch=2, max_queue=4)  # not started: as while `glam serve` warms up
    with background(create_app(engine, model_name="tiny")) as url:
        r = httpx.get(f"{url}/health", timeout=30)
        assert r.status_code == 503 and r.json()["status"] == "warming up" and r.json()["ready"] is False
        engine.start()
        r = httpx.get(f"{url}/health", timeout=30)
        assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["ready"] is True
    engine.stop()


# The command line --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_ports_and_files_are_one_line_before_the_model_loads(capsys, tmp_path):
    missing = str(tmp_path / "no-run")

    def fails(*args) -> str:
        assert main(["serve", "--checkpoint", missing, *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        return err[0]

    for port in ("70000", "0", "-1", "http"):
        assert fails("--port", port).startswith(
            f"error: argument --port: got {port if port != 'http' else repr(port)}; "
        )
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = fails("--port", str(port))
    assert line == f"error: port {port} on 127.0.0.1 is in use (another server?); stop it or choose another --port"
    line = fails("--port", str(_free_port()), "--chat-template", str(tmp_path / "t.jinja"))
    assert line.startswith(f"error: --chat-template '{tmp_path}/t.jinja': cannot read it (")
    (tmp_path / "bad.jinja").write_text("{% for m in messages %}")
    line = fails("--port", str(_free_port()), "--chat-template", str(tmp_path / "bad.jinja"))
    assert line.startswith("error: the chat template is not valid Jinja2 (")
    # a non-loopback address without a key: a warning, then the run directory's error (nothing listened)
    assert main(["serve", "--checkpoint", missing, "--host", "0.0.0.0", "--port", str(_free_port())]) == 2
    warning, error = capsys.readouterr().err.strip().splitlines()
    assert warning.startswith("warning: serving on 0.0.0.0, reachable from other machines, without an API key;")
    assert error == f"error: {missing!r} has no checkpoints; is it a glam run directory (made by `glam train`)?"


@pytest.fixture(scope="module")
def run_dir(model, tmp_path_factory):
    """A run directory holding the tiny model's parameters as checkpoint 1 (written, not trained)."""
    from glam.checkpoint.manager import Checkpointer, prepare_run_dir
    from glam.checkpoint.state import TrainState

    cfg, params, tok = model
    run = tmp_path_factory.mktemp("serve") / "tiny"
    prepare_run_dir(cfg, str(run))
    shutil.copy(tok.path, run / "tokenizer.model")
    scalar = jnp.zeros((), jnp.int32)
    checkpointer = Checkpointer(str(run), writer=True)
    checkpointer.save(TrainState(scalar + 1, params, {"none": scalar}, jnp.zeros((2,), jnp.uint32), scalar), {}, cfg)
    checkpointer.close()
    return run


@pytest.mark.slow
def test_sigterm_drains_a_real_server(model, run_dir):
    """A `glam serve` process: dropped uploads leave no traceback; SIGTERM with a request in flight →
    that request completes, new ones get 503, /health says draining, and the process exits 0."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "glam.cli.main", "serve", "--checkpoint", str(run_dir), "--port", str(port),
           "--max-batch", "2", "--no-warmup", "--drain-timeout", "60"]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=5)
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        for _ in range(20):  # uploads dropped mid-body
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 1000\r\n\r\n{\"prompt\": ")  # fmt: skip
        long = {"prompt": PROMPTS[0], "max_tokens": 100, "temperature": 0, "ignore_eos": True}
        answers = []
        thread = threading.Thread(target=lambda: answers.append(httpx.post(f"{url}/v1/completions", json=long,
                                                                           timeout=120)))  # fmt: skip
        thread.start()
        while httpx.get(f"{url}/health", timeout=30).json()["requests_in_flight"] == 0:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        while (health := httpx.get(f"{url}/health", timeout=30)).json()["status"] != "draining":
            time.sleep(0.01)
        assert health.status_code == 503
        refused = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=30)
        thread.join(timeout=120)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert refused.status_code == 503 and "shutting down" in refused.json()["error"]["message"]
    [answer] = answers
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 100
    assert answer.json()["choices"][0]["text"] == _greedy(model, PROMPTS[0], 100).text
    assert proc.returncode == 0, err
    assert "Traceback" not in err and err.count("client left while sending its request body") <= 20, err
    assert "SIGTERM: draining" in err
