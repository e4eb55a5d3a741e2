"""The Hugging Face export (glam.export, docs/export.md): the tokenizer, the model, the command.

The exported folder is loaded with ``transformers`` only (``trust_remote_code=True``), as a user
without glam would load it; the tests need torch, transformers and tokenizers (the ``export`` extra,
part of ``dev``).
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import inspect
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from small_runs import MODULES, _documents, run_train, small_run_config

pytest.importorskip("tokenizers")
pytestmark = pytest.mark.xdist_group("export")  # one worker: the module's trained run is made once

from glam.checkpoint import load_for_inference  # noqa: E402
from glam.checkpoint.manager import Checkpointer, read_config  # noqa: E402
from glam.cli.main import main  # noqa: E402
from glam.config import resolve  # noqa: E402
from glam.data.tokenizer import Tokenizer, train_tokenizer  # noqa: E402
from glam.export.tokenizer import ExportError, build_fast_tokenizer, verify_hf_tokenizer, write_hf_tokenizer  # noqa: E402
from glam.export.writer import export_model  # noqa: E402
from glam.model.init import bind, init_params  # noqa: E402
from glam.model.moe.layer import moe_ffn_of, moe_ffn_paths  # noqa: E402
from glam.model.transformer import apply  # noqa: E402
from glam.train.metrics import read_metrics  # noqa: E402
from glam.train.state import abstract_state  # noqa: E402


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The test suite's small setup: two JSONL sources and their 512-piece tokenizer (tests/small_runs.py)."""
    folder = tmp_path_factory.mktemp("export")
    config = small_run_config(str(folder))
    return folder, config, Tokenizer(str(folder / "tokenizer.model"))


def corpus_texts() -> list[str]:
    return [doc for name in MODULES for doc in _documents(MODULES[name])]


def test_tokenizer_ids_equal_sentencepiece_on_real_text(small):
    _, _, tok = small
    counts = verify_hf_tokenizer(tok, build_fast_tokenizer(tok), corpus_texts())
    # Exact on all but a few texts; where they differ, it is between segmentations of equal score
    # that decode to the same text (verify_hf_tokenizer raises otherwise): at most 1 token in 2,000.
    assert counts["texts"] > 300 and counts["tokens"] > 50_000
    assert counts["texts_differing"] <= counts["texts"] // 20
    assert counts["tokens_differing"] <= counts["tokens"] // 2000


def test_autotokenizer_loads_the_written_tokenizer(small, tmp_path):
    transformers = pytest.importorskip("transformers")
    folder, _, tok = small
    names = write_hf_tokenizer(str(folder), str(tmp_path))  # a run-like folder holding tokenizer.model
    assert sorted(names) == sorted(os.listdir(tmp_path))
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    text = "Return a new list.\n\tIf the   key is missing, raise KeyError (see 3.14 and naïve 東京)."
    assert hf(text).input_ids == [tok.bos_id, *tok.encode(text)]  # <s> first, as glam's prompts
    assert hf(text, add_special_tokens=False).input_ids == tok.encode(text)
    assert hf.decode(hf(text).input_ids, skip_special_tokens=True) == text
    assert (hf.pad_token_id, hf.unk_token_id, hf.bos_token_id, hf.eos_token_id) == (0, 1, 2, 3)
    # The documented differences: literal ▁ and literal piece names encode as the pieces.
    assert hf("a\u2581b", add_special_tokens=False).input_ids != tok.encode("a\u2581b")
    assert hf("<s>", add_special_tokens=False).input_ids == [tok.bos_id] != tok.encode("<s>")


def test_tokenizer_refuses_a_folder_without_one(tmp_path):
    with pytest.raises(ExportError, match="has no tokenizer.model"):
        write_hf_tokenizer(str(tmp_path), str(tmp_path / "out"))


# ------------------------------------------------------------------------------------------------
# The model: a small trained run (tests/small_runs.py), exported with the command

FP32_ATOL = 1e-4  # |logit| up to ~10; measured max differences 1.5-4e-6 (fp32 sums in another order)
# bf16 weights and activations against glam's fp32, measured on 3 texts (26-797 tokens): the mean NLL
# within 0.0014 nats, mean |Δ log p| 0.0044, per-token max |Δ logit| 0.016 (median) and 0.025 (99th
# percentile); a token whose bf16 router input flips a near-tie between experts differs by up to 0.66.
BF16_NLL_ATOL, BF16_LOGP_MEAN, BF16_P99_ATOL = 0.005, 0.01, 0.05
HELD_OUT = (  # text from modules outside the training corpus (small_runs.MODULES)
    inspect.getdoc(difflib.SequenceMatcher)[:400],
    inspect.getdoc(csv.DictReader) or "Create an object that operates like a regular reader.",
)


@pytest.fixture(scope="module")
def trained(small):
    """A 3-step run of the small MoE config (8 experts, ReLU, top-2), exported in float32 by the command."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    folder, config, _ = small
    run_dir = str(folder / "run")
    run_train(config, run_dir, "train.steps=3", "train.eval_every=3", "checkpoint.every=3", "model.num_layers=2")
    out = str(folder / "hf")
    assert main(["export", run_dir, out]) == 0
    return run_dir, out


def load_hf(out: str):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    # trust_remote_code here too: AutoTokenizer reads config.json first (docs/export.md)
    return model.eval(), transformers.AutoTokenizer.from_pretrained(out, trust_remote_code=True)


def glam_forward(cfg, params, ids: list[int]) -> tuple[np.ndarray, dict]:
    """glam's full forward pass over one row, nothing dropped (moe.eval_no_drop=true): (logits, MoE stats)."""
    cfg = dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, eval_no_drop=True))
    T = len(ids)
    tokens, positions = jnp.asarray([ids]), jnp.arange(T)[None]
    logits, stats, _ = apply(bind(cfg, params), tokens, positions, jnp.ones((1, T), jnp.int32), train=False)
    return np.asarray(logits[0]), stats


def glam_logits(cfg, params, ids: list[int]) -> np.ndarray:
    return glam_forward(cfg, params, ids)[0]


def test_exported_logits_equal_glams_on_held_out_text(trained):
    import torch

    run_dir, out = trained
    cfg, params, tok = load_for_inference(run_dir)
    model, hf_tok = load_hf(out)
    batch = hf_tok(list(HELD_OUT), return_tensors="pt", padding=True)  # left-padded, <s> first
    with torch.no_grad():
        hf = model(**batch).logits.numpy()
    for row, text in enumerate(HELD_OUT):
        ids = [tok.bos_id, *tok.encode(text)]
        want = glam_logits(cfg, params, ids)
        got = hf[row, -len(ids) :]
        np.testing.assert_allclose(got, want, rtol=0, atol=FP32_ATOL)
    assert np.abs(want).max() > 1.0  # a real comparison, not of near-zero logits


def test_greedy_generate_equals_glam_generate(trained, capsys):
    import torch

    run_dir, out = trained
    prompt = "Return a new"
    assert main(["generate", "--checkpoint", run_dir, "--prompt", prompt, "--max-tokens", "32"]) == 0
    glam_text = capsys.readouterr().out.removesuffix("\n")
    model, hf_tok = load_hf(out)
    ids = hf_tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        new = model.generate(ids, max_new_tokens=32, do_sample=False)[0, ids.shape[1] :]
    assert new.shape[0] == 32 or new[-1] == hf_tok.eos_token_id
    assert hf_tok.decode(new, skip_special_tokens=True) == glam_text and len(glam_text) > 10
    # Left-padded in a batch beside a longer prompt, the row continues the same (positions from the mask).
    batch = hf_tok([prompt, "Raise KeyError if the key is not found in the mapping"], return_tensors="pt", padding=True)
    with torch.no_grad():
        rows = model.generate(**batch, max_new_tokens=32, do_sample=False)[:, batch.input_ids.shape[1] :]
    assert hf_tok.decode(rows[0], skip_special_tokens=True) == glam_text


def test_bfloat16_export_is_close_and_half_the_size(trained, tmp_path):
    import torch

    run_dir, out = trained
    bf16 = str(tmp_path / "bf16")
    assert main(["export", run_dir, bf16, "--dtype", "bfloat16"]) == 0
    assert os.path.getsize(f"{bf16}/model.safetensors") < 0.6 * os.path.getsize(f"{out}/model.safetensors")
    cfg, params, tok = load_for_inference(run_dir)
    model, _ = load_hf(bf16)
    assert model.model.layers[0].mlp.router.weight.dtype == torch.float32  # routing stays fp32
    assert model.model.layers[1].mlp.up_proj.weight.dtype == torch.bfloat16
    ids = [tok.bos_id, *tok.encode(HELD_OUT[0])]
    with torch.no_grad():
        got = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1).numpy()
    want = np.asarray(jax.nn.log_softmax(glam_logits(cfg, params, ids), -1))
    nll = [-lp[np.arange(len(ids) - 1), ids[1:]].mean() for lp in (got, want)]
    assert abs(nll[0] - nll[1]) < BF16_NLL_ATOL and 2 < nll[1] < 10
    assert np.abs(got - want).mean() < BF16_LOGP_MEAN
    assert np.quantile(np.abs(got - want).max(-1), 0.99) < BF16_P99_ATOL


def test_model_card_and_configs(trained):
    run_dir, out = trained
    card = open(f"{out}/README.md", encoding="utf-8").read()
    heldout = [r for r in read_metrics(run_dir) if r.get("kind") == "eval"][-1]
    assert f"| mean | {heldout['heldout/mean']:.4f} |" in card and "| alpha |" in card
    cfg, params, _ = load_for_inference(run_dir)
    total = sum(int(np.size(a)) for a in jax.tree.leaves(params))
    assert f"({total:,})" in card  # total parameters: the exported tensors are exactly glam's
    config = json.load(open(f"{out}/config.json"))
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_glam.GlamForCausalLM"
    assert (config["num_local_experts"], config["num_experts_per_tok"], config["expert_activation"]) == (8, 2, "relu")
    assert json.load(open(f"{out}/generation_config.json"))["eos_token_id"] == 3


def test_a_checkpoint_saved_on_a_mesh_exports_the_same(trained, tmp_path):
    """The checkpoint restored onto a 4 × 2 mesh of 8 simulated devices and saved from there (Orbax
    writes each shard) exports the same bytes: the export reads whole arrays on the host."""
    from safetensors.numpy import load_file

    run_dir, out = trained
    cfg = read_config(run_dir)
    mesh_run = str(tmp_path / "mesh_run")
    shutil.copytree(run_dir, mesh_run, ignore=shutil.ignore_patterns("checkpoints"))
    mesh = jax.make_mesh((4, 2), ("data", "model"), devices=jax.devices()[:8])
    source = Checkpointer(run_dir)
    state, data = source.restore(abstract_state(cfg, mesh))
    source.close()
    assert len(state.params["blocks"]["moe_layer"]["ffn"]["w_in"].sharding.device_set) == 8
    target = Checkpointer(mesh_run, writer=True)
    target.save(state, data, cfg)
    target.wait()
    target.close()
    assert main(["export", mesh_run, str(tmp_path / "hf")]) == 0
    ours, theirs = load_file(f"{out}/model.safetensors"), load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)


def test_bad_input_is_one_line(trained, tmp_path, capsys):
    run_dir, out = trained
    (tmp_path / "empty_run").mkdir()
    cases = [
        (["export", str(tmp_path / "empty_run"), str(tmp_path / "o1")], "has no checkpoints"),
        (["export", run_dir, out], "is not empty; give a new or empty folder, or --force"),
        (["export", run_dir, str(tmp_path / "o3"), "--step", "7"], "no checkpoint at step 7"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert main(["export", run_dir, out, "--force"]) == 0  # the export's files replace their own
    assert main(["export", run_dir, str(tmp_path / "tok"), "--tokenizer-only"]) == 0
    assert sorted(os.listdir(tmp_path / "tok")) == sorted(
        ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"]
    )
    # A run whose tokenizer.model is not the one its tokenizer.json records (issue 28's check).
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    shutil.copy(os.path.join(run_dir, "tokenizer.json"), swapped)
    (swapped / "tokenizer.model").write_bytes(b"another tokenizer")
    capsys.readouterr()
    assert main(["export", str(swapped), str(tmp_path / "o4"), "--tokenizer-only"]) == 2
    err = capsys.readouterr().err
    assert "is not the tokenizer this run was trained with" in err and err.count("\n") == 1, err
    # An unexportable variant is refused before its weights are read.
    group = tmp_path / "group_run"
    group.mkdir()
    cfg = resolve("tiny", ["moe.router=expert_choice", "moe.expert_choice_eval=group"])
    (group / "config.yaml").write_text(cfg.to_yaml())
    capsys.readouterr()
    assert main(["export", str(group), str(tmp_path / "o2")]) == 2
    assert "expert_choice_eval='group'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# The variants glam trains, in-process with random weights (the router bias made non-zero)

VARIANTS = {
    "geglu+shared+bias+top3": [
        "moe.num_experts=4",
        "model.expert_activation=geglu",
        "moe.shared_experts=1",
        "moe.balance=bias",
        "moe.top_k=3",
    ],
    "expert_choice+gelu+zero_logit": [
        "moe.num_experts=4",
        "moe.router=expert_choice",
        "model.expert_activation=gelu",
        "model.extra_zero_logit=true",
    ],
    "every_layer+bias": ["moe.num_experts=4", "moe.layers=all", "moe.balance=bias"],  # moe_every_layer
    "dense": ["moe.num_experts=0"],
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variants_export_with_equal_logits_and_aux_loss(small, tmp_path, name):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    _, _, tok = small
    small_model = [
        "model.d_model=64",
        "model.num_layers=2",
        "model.num_heads=2",
        "model.head_dim=16",
        "model.ffn_dim=96",
        "model.vocab_size=512",
        "moe.eval_no_drop=true",
    ]
    cfg = resolve("tiny", [*small_model, *VARIANTS[name]])
    params = init_params(cfg, jax.random.key(0))
    if cfg.is_moe and cfg.moe.balance == "bias":
        for i, path in enumerate(moe_ffn_paths(cfg.moe)):
            ffn = moe_ffn_of(params, path)
            ffn["router_bias"] = 0.1 * jax.random.normal(jax.random.key(1 + i), ffn["router_bias"].shape)
    export_model(cfg, params, tok, str(tmp_path))
    model, _ = load_hf(str(tmp_path))
    ids = [tok.bos_id, *tok.encode(HELD_OUT[0])][:48]
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_router_logits=True)
    want = glam_logits(cfg, params, ids)
    np.testing.assert_allclose(out.logits[0].numpy(), want, rtol=0, atol=FP32_ATOL)
    if cfg.is_moe:  # Mixtral's way: router logits per MoE layer, and glam's aux loss summed over them
        assert [r.shape for r in out.router_logits] == [(len(ids), 4)] * cfg.num_moe_layers
        T = len(ids)
        _, stats, _ = apply(
            bind(cfg, params), jnp.asarray([ids]), jnp.arange(T)[None], jnp.ones((1, T), jnp.int32), train=False
        )
        np.testing.assert_allclose(float(out.aux_loss), float(jnp.sum(stats["aux_loss"])), rtol=1e-5)
    else:
        assert out.router_logits is None


def test_a_bpe_tokenizer_is_refused(small, tmp_path):
    bpe = train_tokenizer(corpus_texts()[:200], 400, str(tmp_path / "bpe.model"), model_type="bpe", num_threads=1)
    with pytest.raises(ExportError, match="only Unigram SentencePiece models export"):
        write_hf_tokenizer(bpe, str(tmp_path / "out"))
