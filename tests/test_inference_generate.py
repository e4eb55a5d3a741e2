"""The text API end to end: generate/stream, stop strings, the token limit, the evals adapter, the CLI."""

from __future__ import annotations

import types

import jax
import pytest

from glam.cli.main import main
from glam.config import resolve
from glam.data.tokenizer import train_tokenizer
from glam.errors import GLaMError
from glam.evals.model_api import LanguageModel
from glam.inference import BeamSearch, GLaMLanguageModel, Sampler, generate, load_language_model
from glam.model.init import init_params

# An MoE model with a finite eval capacity (moe.eval_no_drop off), so this file runs the dropping
# path; exact equalities with the full forward pass are tested in test_inference_decode/scoring.
CFG = resolve(
    "tiny",
    [
        "train.seq_len=32",
        "model.max_seq_len=48",
        "model.vocab_size=512",
        "model.d_model=64",
        "model.num_heads=2",
        "model.head_dim=16",
        "model.ffn_dim=128",
        "model.num_layers=2",
        "moe.num_experts=4",
    ],
)
TEXT = [
    f"The {a} {b} walks to the {c} and sees {n} birds.\nQ: Where?\nA: the {c}."
    for a in ("quick", "lazy", "old", "young")
    for b in ("fox", "dog", "cat", "horse")
    for c, n in (("river", 3), ("market", 12), ("garden", 7))
]


class EosAt:
    """The test tokenizer with another end-of-sequence id: -1 (never drawn) makes every row run to the
    token limit; a token the free run draws at step j makes the row end there."""

    def __init__(self, tokenizer, eos_id: int):
        self._tokenizer, self.eos_id = tokenizer, eos_id

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tokenizer = train_tokenizer(TEXT, 320, str(tmp_path_factory.mktemp("tok") / "tok.model"), num_threads=1)
    return CFG, init_params(CFG, jax.random.key(0)), tokenizer


def test_generate_streams_the_same_text_it_returns(model):
    cfg, params, tok = model
    events = []
    outs = generate(cfg, params, EosAt(tok, -1), ["The quick fox", "A:"], max_tokens=8, stream=events.append)
    for i, out in enumerate(outs):
        mine = [e for e in events if e.index == i]
        assert "".join(e.text for e in mine) == out.text
        assert sum((e.tokens for e in mine), ()) == out.tokens
        assert mine[-1].finish_reason == out.finish_reason and all(e.finish_reason is None for e in mine[:-1])
        assert (len(out.tokens), out.finish_reason) == (8, "length")
        assert tok.decode(out.tokens) == out.text
    # Ending at eos: the free run's last token not drawn before is made the eos; the row stops before it.
    free = outs[0].tokens
    j = max(i for i, t in enumerate(free) if t not in free[:i])
    [cut] = generate(cfg, params, EosAt(tok, free[j]), ["The quick fox"], max_tokens=8)
    assert (cut.tokens, cut.finish_reason) == (free[:j], "eos")


def test_stop_strings_cut_the_text(model):
    cfg, params, tok = model
    [free] = generate(cfg, params, tok, ["The lazy dog"], max_tokens=8)
    assert len(free.text) >= 6, "the test model should give a text long enough to pick a stop string from"
    stop = free.text[3:5]
    [out] = generate(cfg, params, tok, ["The lazy dog"], max_tokens=8, stop=["@@never@@", stop])
    assert out.finish_reason == "stop" and out.text == free.text[: free.text.find(stop)]
    assert len(out.tokens) < len(free.tokens) or free.finish_reason != "length"


def test_token_limit_and_too_long_prompt(model):
    cfg, params, tok = model
    no_eos = EosAt(tok, -1)
    [out] = generate(cfg, params, no_eos, [[tok.bos_id, 50, 60]], max_tokens=3, sampler=Sampler(1.0, top_k=5))
    assert (len(out.tokens), out.finish_reason) == (3, "length")
    long_prompt = "The quick fox walks to the river. " * 10
    with pytest.raises(GLaMError, match=r"prompt 1 is \d+ tokens.*shorten the prompt"):
        generate(cfg, params, tok, ["short", long_prompt], max_tokens=8)


def test_language_model_adapter(model):
    cfg, params, tok = model
    lm = GLaMLanguageModel(cfg, params, tok, batch_size=2)
    assert isinstance(lm, LanguageModel)
    (ll, _, n), (_, _, n2) = lm.loglikelihood([("The quick fox walks to the ", "river"), ("Q:", " Where?")])
    # The context's trailing space moves to the continuation: " river" is scored as the whole text has it.
    whole, ctx = tok.encode("The quick fox walks to the river"), tok.encode("The quick fox walks to the")
    assert n == len(whole) - len(ctx) and ll < 0 and n2 >= 1  # the greedy flag: the test below
    [(text_ll, count), (_, long_count)] = lm.loglikelihood_rolling(["Q: Where?", "The quick fox. " * 30])
    assert count == len(tok.encode("Q: Where?")) and text_ll < 0
    assert long_count == len(tok.encode("The quick fox. " * 30)) > cfg.model.max_seq_len  # several windows
    contexts = ["The old cat walks to the garden. " * 20, "The quick"]  # the first is cut on the left
    texts = lm.generate(contexts, max_tokens=5, stop=["\n"], beam_size=2)
    assert len(texts) == 2 and all("\n" not in t for t in texts)
    # Beam search hands each row over whole, as one event; the adapter gave the same texts.
    room = cfg.model.max_seq_len - 5
    prompts = [[tok.bos_id, *tok.encode(c)][-room:] for c in contexts]
    events = []
    outs = generate(cfg, params, tok, prompts, max_tokens=5, sampler=BeamSearch(2), stop=["\n"], stream=events.append)
    assert [e.index for e in events] == [0, 1] and all(e.finish_reason for e in events)
    assert [o.text for o in outs] == [e.text for e in events] == texts


def test_greedy_flag_is_true_exactly_for_the_models_own_greedy_continuation(model):
    """Scored with nothing dropped (moe.eval_no_drop, where the full pass equals the decode steps): the
    tokens generate() picks greedily are greedy; change the last of them and they are not."""
    import dataclasses

    from glam.inference import scoring

    cfg, params, tok = model
    cfg = dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, eval_no_drop=True))
    ctx = tok.encode("The quick fox walks to the")
    [own] = generate(cfg, params, EosAt(tok, -1), [[tok.bos_id, *ctx]], max_tokens=4)
    other = [*own.tokens[:-1], (own.tokens[-1] + 1) % cfg.model.vocab_size]
    (ll, greedy, n), (ll_other, greedy_other, _) = scoring.loglikelihood(
        cfg, params, [(ctx, list(own.tokens)), (ctx, other)], bos_id=tok.bos_id
    )
    assert (greedy, greedy_other, n) == (True, False, 4) and ll > ll_other


def test_language_model_samples_with_a_sampler(model):
    cfg, params, tok = model
    lm = GLaMLanguageModel(cfg, params, tok, batch_size=1)
    [greedy] = generate(cfg, params, tok, ["The lazy dog"], max_tokens=8)
    # Top-1 of the tempered distribution is its argmax: the sampling path gives the greedy text.
    assert lm.generate(["The lazy dog"], max_tokens=8, stop=[], beam_size=1, temperature=0.7, top_k=1) == [greedy.text]
    # The settings and the seed reach the Sampler: the same draw as generate() with them.
    sampled = lm.generate(["The lazy dog"], max_tokens=8, stop=[], beam_size=1, temperature=1.0, top_k=5, seed=3)
    [out] = generate(cfg, params, tok, ["The lazy dog"], max_tokens=8, sampler=Sampler(1.0, top_k=5), seed=3)
    assert sampled == [out.text]
    with pytest.raises(GLaMError, match="asks for sampling but beam_size=2"):
        lm.generate(["The quick"], max_tokens=6, stop=[], beam_size=2, temperature=1.0)
    with pytest.raises(GLaMError, match="set a temperature > 0"):
        lm.generate(["The quick"], max_tokens=6, stop=[], beam_size=1, top_p=0.5)


@pytest.fixture
def fake_checkpoint(model, monkeypatch):
    """A stand-in ``glam.checkpoint`` whose ``load_for_inference`` returns the test model."""
    module = types.SimpleNamespace(load_for_inference=lambda run_dir, step=None: model)
    monkeypatch.setitem(__import__("sys").modules, "glam.checkpoint", module)


def test_cli_streams_one_prompt(model, fake_checkpoint, capsys):
    cfg, params, tok = model
    lm = load_language_model("runs/x")
    assert lm.cfg == cfg and lm.params is params and lm.tokenizer is tok
    assert main(["generate", "--checkpoint", "runs/x", "--prompt", "The quick", "--max-tokens", "8"]) == 0
    [expected] = generate(cfg, params, tok, ["The quick"], max_tokens=8)
    assert capsys.readouterr().out == expected.text + "\n"


def test_cli_file_of_prompts_and_flag_errors(model, fake_checkpoint, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('"The quick"\n{"prompt": "Q: Where?"}\n', encoding="utf-8")
    assert main(["generate", "--checkpoint", "x", "--file", str(prompts), "--max-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert out.index("=== [0] The quick") < out.index("=== [1] Q: Where?")
    assert main(["generate", "--checkpoint", "x", "--prompt", "a", "--beam", "2", "--temperature", "1"]) == 2
    assert "choose one" in capsys.readouterr().err
