"""Continuous batching: a row's answer is the one it gets alone, whatever else is in the batch and whenever it came.

One small MoE model is trained for the module (the test corpus of small_runs, eval capacity factor 1.0,
so the checkpoint's own eval capacity binds: a full forward pass with capacity scores a prompt
differently when a long batchmate widens the padded group). The engine runs on the engine thread as
the server runs it; rows are compared with the same prompt served alone — tokens exactly, log-probs
within float rounding (LOGPROB_TOL) — and with
``glam.inference.generate``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from small_runs import small_run_config, write_corpus

from glam.checkpoint import load_for_inference
from glam.config import resolve
from glam.inference import GLaMLanguageModel, generate
from glam.inference.scoring import ScoreRow, make_batch, token_logprobs
from glam.serve.engine import Engine, Event, Job, Row, serving_config

STEPS = 80  # on one-sentence documents the model then predicts eos where a sentence ends (-0.5 vs -2.8 nats)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from glam.train.loop import train

    folder = tmp_path_factory.mktemp("serve_batching")
    docs = []
    for source in write_corpus(str(folder / "corpus")):  # each docstring's first paragraph: short documents
        for line in Path(source["path"]).read_text(encoding="utf-8").splitlines():
            docs.append(json.loads(line)["text"].split("\n\n")[0].replace("\n", " "))
    short = folder / "short.jsonl"
    short.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    config = small_run_config(
        str(folder),
        moe={"capacity_factor_eval": 1.0},  # the checkpoint's eval capacity binds
        data={"sources": [{"name": "short", "path": str(short), "format": "jsonl"}]},
        train={"steps": STEPS, "eval_every": STEPS, "log_every": STEPS},
        checkpoint={"every": STEPS, "keep": 1},
    )
    train(resolve(config, []), str(folder / "run"))
    cfg, params, tokenizer = load_for_inference(str(folder / "run"))
    return cfg, params, tokenizer, docs[:64], str(folder / "run")


@pytest.fixture(scope="module")
def engine(trained):
    cfg, params, tokenizer, *_ = trained
    engine = Engine(cfg, params, tokenizer, max_batch=4, prefill_chunk=16).start()
    yield engine
    engine.stop()


def row_of(engine: Engine, prompt: str, max_tokens: int, **fields) -> Row:
    ids, given, text = engine.prompt_ids(prompt)
    return Row(ids=ids, given_bos=given, echo_text=text, max_tokens=max_tokens, logprobs=1, **fields)


class Collect:
    """Submit rows (one job each, optionally staggered) and gather each row's events until it finishes."""

    def __init__(self, engine: Engine):
        self.engine, self.events, self.jobs = engine, {}, {}
        self.order = []  # keys in the order their rows finished
        self.done = threading.Condition()

    def submit(self, key, row: Row) -> Job:
        self.events[key] = []

        def deliver(event: Event, key=key):
            with self.done:
                self.events[key].append(event)
                if event.finish_reason:
                    self.order.append(key)
                self.done.notify_all()

        job = Job([row], deliver)
        self.jobs[key] = job
        self.engine.admit()
        self.engine.submit(job)
        return job

    def finished(self, key) -> bool:
        return bool(self.events[key]) and self.events[key][-1].finish_reason is not None

    def wait(self, keys, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        with self.done:
            while not all(self.finished(k) or self.jobs[k].cancelled.is_set() for k in keys):
                assert time.monotonic() < deadline, "the engine did not finish the rows in time"
                self.done.wait(timeout=1)
        for _ in keys:
            self.engine.release()
        return {k: self.events[k] for k in keys}


def answer(events: list[Event]) -> tuple:
    """(token pieces, their log-probs, text, finish reason) of one row."""
    tokens = [t for e in events for t in e.tokens]
    return (
        [t.piece for t in tokens],
        [t.logprob for t in tokens],
        "".join(e.text for e in events),
        events[-1].finish_reason,
    )


# Token pieces, text and finish reason are compared exactly; log-probs within float rounding: a row
# prefilled in a group of another size rounds differently in the last bits (up to 5e-7 seen, JAX 0.10.2
# and 0.12.1).
LOGPROB_TOL = 1e-5


def assert_same(got: tuple, want: tuple, what: str = "") -> None:
    assert (got[0], got[2], got[3]) == (want[0], want[2], want[3]), what
    assert got[1] == pytest.approx(want[1], abs=LOGPROB_TOL), what


def alone(engine: Engine, row: Row) -> tuple:
    c = Collect(engine)
    c.submit(0, row)
    return answer(c.wait([0])[0])


PROMPTS = [
    "Return the",
    "If the argument is a string,",  # several prefill chunks of 16 with the longer ones below
    "Create a new dictionary",
    "The",
    "Raise an error if the path does not exist or is not a directory, and return the list of the names in it",
]


def test_scoring_does_not_depend_on_batchmates_where_eval_capacity_binds(trained, engine):
    cfg, params, tokenizer, *_ = trained
    short = [tokenizer.bos_id, *tokenizer.encode("Return a new list of the items in the iterable, sorted by key.")]
    long = [tokenizer.bos_id, *tokenizer.encode(" ".join(["Return the path of the file, or raise an error."] * 8))]

    def score(rows):  # the checkpoint's own routing: one capacity-bound group per padded row
        batch = make_batch([ScoreRow(r[:-1], r[1:], len(r) - 1) for r in rows], 4, cfg.model.max_seq_len)
        return jax.device_get(token_logprobs(cfg, params, batch))[0][0, : len(short) - 1]

    assert not np.allclose(score([short]), score([short, long]), atol=1e-3)  # capacity binds: the setup can tell

    def served(text, others):
        c = Collect(engine)
        keys = list(range(len(others) + 1))
        for k, t in zip(keys, [text, *others]):
            c.submit(k, row_of(engine, t, 0, echo=True))
        return answer(c.wait(keys)[0])

    text = tokenizer.decode(short[1:])
    mates = [tokenizer.decode(long[1:]), "Return the list.", "Split the string at the first space, from the left."]
    assert len({len(engine.prompt_ids(t)[0]) for t in [text, *mates]}) == 4  # all of different lengths
    by_itself = served(text, [])
    batched = served(text, mates)
    assert_same(batched, by_itself)
    lm = GLaMLanguageModel(serving_config(cfg), params, tokenizer)
    assert sum(by_itself[1]) == pytest.approx(lm.loglikelihood([("", text)])[0][0], abs=1e-4)
    # glam eval's scoring, with the checkpoint's binding capacity: a batch holds one length bucket only
    evaluated = GLaMLanguageModel(cfg, params, tokenizer)
    requests = [("", text), ("", tokenizer.decode(long[1:])), ("", mates[1])]
    assert evaluated.loglikelihood(requests)[0] == evaluated.loglikelihood(requests[:1])[0]


def test_greedy_rows_are_their_alone_answers_under_continuous_batching(trained, engine):
    """Staggered arrivals, prompts of 2-25 tokens (1-2 prefill chunks), 6-40 new tokens, n = 2, a cancellation."""
    cfg, params, tokenizer, *_ = trained
    lengths = [40, 12, 25, 6, 30]
    rows = [row_of(engine, p, n) for p, n in zip(PROMPTS, lengths)]
    reference = [alone(engine, row) for row in rows]

    c = Collect(engine)
    c.submit("long", rows[0])
    while len(c.events["long"]) < 3 and not c.finished("long"):  # it is decoding when the others arrive
        time.sleep(0.01)
    for i, row in enumerate(rows[1:], 1):
        c.submit(i, row)
        time.sleep(0.02 * i)
    c.submit("twin", rows[2])  # n = 2: the same prompt in two slots
    gone = c.submit("gone", row_of(engine, PROMPTS[1], 40, ignore_eos=True))
    while not c.events["gone"]:
        time.sleep(0.01)
    gone.cancel()  # a client leaving mid-stream frees its slot; the others go on
    out = c.wait(["long", 1, 2, 3, 4, "twin", "gone"])
    assert_same(answer(out["long"]), reference[0])
    for i in range(1, 5):
        assert_same(answer(out[i]), reference[i], PROMPTS[i])
    assert_same(answer(out["twin"]), reference[2])
    assert not (out["gone"] and out["gone"][-1].finish_reason)  # cancelled before its 40 tokens

    texts = generate(serving_config(cfg), params, tokenizer, PROMPTS, max_tokens=max(lengths))
    for ref, n, completion in zip(reference, lengths, texts):
        tokens = list(completion.tokens)  # generate ran to the longest row's length: cut at this row's
        assert ref[2] == (tokenizer.decode(tokens[:n]) if len(tokens) > n else completion.text)


def test_a_seeded_sampled_row_draws_the_same_tokens_in_any_batch(engine):
    row = row_of(engine, "Return the", 24, temperature=0.9, top_p=0.95, top_k=50, seed=1234)
    first = alone(engine, row)
    c = Collect(engine)
    for k, prompt in enumerate(PROMPTS):
        c.submit(k, row_of(engine, prompt, 20, temperature=1.0, seed=k))
    c.submit("seeded", row)
    assert_same(answer(c.wait([*range(len(PROMPTS)), "seeded"])["seeded"]), first)
    assert first != alone(engine, row_of(engine, "Return the", 24, temperature=0.9, top_p=0.95, top_k=50, seed=99))


def test_a_newcomer_joins_the_running_batch_and_static_batching_makes_it_wait(trained):
    cfg, params, tokenizer, *_ = trained
    finish_order = {}
    for batching in ("continuous", "static"):
        engine = Engine(cfg, params, tokenizer, max_batch=4, batching=batching).start()
        try:
            c = Collect(engine)
            c.submit("long", row_of(engine, "The", 60, ignore_eos=True))
            while len(c.events["long"]) < 2:
                time.sleep(0.005)
            c.submit("short", row_of(engine, "Return the", 3, ignore_eos=True))
            out = c.wait(["long", "short"])
            finish_order[batching] = c.order
            assert len(answer(out["long"])[0]) == 60 and len(answer(out["short"])[0]) == 3
        finally:
            engine.stop()
    assert finish_order == {"continuous": ["short", "long"], "static": ["long", "short"]}


def eos_context(trained) -> list[int]:
    """Token ids of a document prefix (bos not included) after which the model's likeliest next token is eos.

    Only a prefix that its own text encodes back to is taken, so a text prompt gives the same ids.
    """
    cfg, params, tokenizer, docs, _ = trained
    cfg = serving_config(cfg)
    for doc in docs:
        ids = [tokenizer.bos_id, *tokenizer.encode(doc)][: cfg.model.max_seq_len - 8]
        batch = make_batch([ScoreRow(ids, ids, 1)], 1, cfg.model.max_seq_len)
        _, top_ids, _ = jax.device_get(token_logprobs(cfg, params, batch))
        for j in range(2, len(ids)):
            context = ids[1 : j + 1]
            if top_ids[0, j, 0] == tokenizer.eos_id and tokenizer.encode(tokenizer.decode(context)) == context:
                return context
    pytest.fail(f"the model trained {STEPS} steps never predicts eos on the corpus: train it longer")


def test_the_eos_token_is_reported_with_its_log_prob(trained, engine):
    cfg, params, tokenizer, *_ = trained
    context = eos_context(trained)
    eos = engine.piece(tokenizer.eos_id)
    c = Collect(engine)
    c.submit(0, row_of(engine, context, 1, echo=True))
    pieces, logprobs, _, reason = answer(c.wait([0])[0])
    n = len(context)
    assert (pieces[-1], reason, len(pieces)) == (eos, "stop", n + 1)  # n prompt tokens, then eos
    ids = [tokenizer.bos_id, *context, tokenizer.eos_id]
    batch = make_batch([ScoreRow(ids[:-1], ids[1:], len(ids) - 1)], 1, cfg.model.max_seq_len)
    want = jax.device_get(token_logprobs(serving_config(cfg), params, batch))[0][0, : n + 1]
    assert logprobs[-1] == pytest.approx(float(want[n]), abs=1e-5)  # log p(eos | context)
    # lm-eval's local-completions drops the last entry: what is left scores the whole prompt
    assert logprobs[:-1] == pytest.approx([float(x) for x in want[:n]], abs=1e-5)

    c = Collect(engine)
    c.submit("min", row_of(engine, context, 4, min_tokens=3))
    c.submit("ignore", row_of(engine, context, 3, ignore_eos=True))
    out = c.wait(["min", "ignore"])
    pieces, _, _, _ = answer(out["min"])
    assert eos not in pieces[:3] and len(pieces) >= 3
    pieces, _, _, reason = answer(out["ignore"])
    assert (pieces[0], len(pieces), reason) == (eos, 3, "length")


@pytest.mark.slow
def test_lm_eval_local_completions_scores_continuations_that_end_at_eos(trained, tmp_path):
    """lm-eval's own client through the HTTP server equals glam's scoring, where the model predicts eos next."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from glam.serve import background
    from glam.serve.app import create_app

    cfg, params, tokenizer, *_ = trained
    context = tokenizer.decode(eos_context(trained))
    words = context.split(" ")
    requests = [(" ".join(words[:k]), " " + " ".join(words[k:])) for k in (1, len(words) // 2, len(words) - 1)]
    requests += [("Return the", " list of names."), ("The", " path")]
    lm = GLaMLanguageModel(serving_config(cfg), params, tokenizer)
    want = [ll for ll, _, _ in lm.loglikelihood(requests)]
    engine = Engine(cfg, params, tokenizer, max_batch=4).start()
    try:
        with background(create_app(engine, model_name="tiny")) as url:
            client = LocalCompletionsAPI(
                base_url=f"{url}/v1/completions", model="tiny", tokenizer_backend="remote", batch_size=4,
                max_length=cfg.model.max_seq_len - 1,
            )  # fmt: skip
            instances = [Instance("loglikelihood", {}, req, i) for i, req in enumerate(requests)]
            got = [ll for ll, _ in client.loglikelihood(instances)]
    finally:
        engine.stop()
    assert got == pytest.approx(want, abs=1e-3)


def test_served_on_a_mesh_equals_one_device(trained, engine):
    """Experts over ``data``, hidden over ``model`` (4×2 simulated devices): the same tokens as one device."""
    import dataclasses

    from glam.model.init import param_shardings
    from glam.sharding.mesh import make_mesh

    cfg, params, tokenizer, *_ = trained
    cfg = dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, data=4, model=2))
    mesh = make_mesh(cfg, jax.devices()[:8])
    sharded = jax.device_put(params, param_shardings(cfg, mesh))
    assert "data" in str(sharded["blocks"]["moe_layer"]["ffn"]["w_in"].sharding.spec[1])  # experts split over data
    rows = [row_of(engine, p, 10, echo=True) for p in PROMPTS[:4]]
    on_mesh = Engine(cfg, sharded, tokenizer, max_batch=4, prefill_chunk=16, mesh=mesh).start()
    try:
        c = Collect(on_mesh)
        for k, row in enumerate(rows):
            c.submit(k, row)
        got = c.wait(list(range(len(rows))))
    finally:
        on_mesh.stop()
    for k, row in enumerate(rows):
        pieces, logprobs, text, reason = answer(got[k])
        want = alone(engine, row)
        assert (pieces, text, reason) == (want[0], want[2], want[3])
        assert logprobs == pytest.approx(want[1], abs=2e-5)  # measured: within 2e-6


@pytest.mark.slow
def test_glam_generate_on_a_mesh_prints_what_one_device_does(trained):
    import os
    import subprocess
    import sys

    cfg, params, tokenizer, _, run = trained
    want = generate(cfg, params, tokenizer, ["Return the"], max_tokens=12)[0].text
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the CLI asks for its own 8 devices
    command = [sys.executable, "-m", "glam.cli.main", "generate", "--checkpoint", run, "--max-tokens", "12"]
    out = subprocess.run([*command, "--mesh", "4x2", "--prompt", "Return the"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.rstrip("\n") == want
    bad = subprocess.run([*command, "--mesh", "3x2", "--prompt", "Return the"], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "mesh" in bad.stderr and "Traceback" not in bad.stderr
