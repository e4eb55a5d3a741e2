"""SentencePiece tokenizer: lossless round trip of arbitrary Unicode, ids, errors."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glam.data.errors import DataError
from glam.data.tokenizer import Tokenizer, train_tokenizer

WORDS = "the of and model expert layer token gate sparse dense mixture route batch learn data text".split()


def synthetic_docs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        lines = [" ".join(rng.choice(WORDS, size=rng.integers(3, 12))) for _ in range(rng.integers(1, 4))]
        docs.append(f"Doc {i}: " + "\n".join(lines) + f"  value={rng.integers(1000)}\tend.")
    return docs


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("tok") / "t.model"
    return train_tokenizer(synthetic_docs(400), 512, str(path), num_threads=1)


def test_special_ids_and_vocab(tokenizer):
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
    assert 300 < tokenizer.vocab_size <= 512
    assert [tokenizer.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]


TRICKY = [
    "  a  b\t\n",
    " leading",
    "trailing   ",
    "\n\n\nnewlines\n",
    "emoji 😀👍🏽 and flags 🇫🇷",
    "中文字符和日本語のテキスト",
    "\x00nul\x00",
    "e\u0301 combining a\u0308\u0323",
    "\u2581 literal space mark \u2581\u2581",
    "\r\n windows \r\n",
    "",
    "\ufffd replacement \U0010ffff max",
    "the model routes the token",
]


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_tricky_strings(tokenizer, text):
    ids = tokenizer.encode(text)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.unk_id not in ids
    assert tokenizer.decode(ids) == text


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_round_trip_arbitrary_unicode(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_common_words_are_single_pieces(tokenizer):
    assert len(tokenizer.encode("the")) == 1
    assert len(tokenizer.encode("mixture")) <= 2


def test_missing_and_corrupt_model(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Tokenizer(str(tmp_path / "nope.model"))
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"this is not a sentencepiece model" * 10)
    with pytest.raises(DataError, match="not a valid SentencePiece model"):
        Tokenizer(str(bad))


def test_training_errors(tmp_path):
    with pytest.raises(DataError, match="too small"):
        train_tokenizer(["abc"], 100, str(tmp_path / "x.model"))
    with pytest.raises(DataError, match="no text"):
        train_tokenizer(["", "  "], 512, str(tmp_path / "x.model"))
    with pytest.raises(DataError, match="model_type"):
        train_tokenizer(["abc"], 512, str(tmp_path / "x.model"), model_type="wordpiece")


def test_bpe_trains_and_round_trips(tmp_path):
    start = time.perf_counter()
    tok = train_tokenizer(synthetic_docs(200), 400, str(tmp_path / "bpe.model"), model_type="bpe", num_threads=1)
    assert time.perf_counter() - start < 20
    text = "  the sparse\tmixture 😀\n"
    assert tok.decode(tok.encode(text)) == text


def test_a_damaged_tokenizer_file_is_never_answered_with_a_retrain(tmp_path):
    """A run trained with a tokenizer needs that very file: the advice puts the original back first."""
    path = tmp_path / "tok.model"
    path.write_bytes(b"not a model")
    with pytest.raises(DataError) as err:
        Tokenizer(str(path))
    assert str(err.value).startswith(f"tokenizer {str(path)!r} is not a valid SentencePiece model (")
    assert str(err.value).endswith(
        "); put back the original if a run was trained with it (another tokenizer would change what its ids mean), "
        "else make one with `glam tokenizer train`"
    )
