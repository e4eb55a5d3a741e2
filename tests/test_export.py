"""The Hugging Face export (glam.export, docs/export.md): the tokenizer, the model, the command.

The exported folder is loaded with ``transformers`` only (``trust_remote_code=True``), as a user
without glam would load it; the tests need torch, transformers and tokenizers (the ``export`` extra,
part of ``dev``).
"""

from __future__ import annotations

import os

import pytest
from small_runs import MODULES, _documents, small_run_config

pytest.importorskip("tokenizers")

from glam.data.tokenizer import Tokenizer  # noqa: E402
from glam.export.tokenizer import ExportError, build_fast_tokenizer, verify_hf_tokenizer, write_hf_tokenizer  # noqa: E402


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
