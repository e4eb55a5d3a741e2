"""SentencePiece tokenizer: training from a document sample and a lossless wrapper.

Ids follow docs/design.md: ``pad = 0, unk = 1, bos = 2, eos = 3``. The model is trained so that
``decode(encode(s)) == s`` for every Unicode string ``s``:

- ``byte_fallback`` encodes any character the vocabulary lacks as its UTF-8 bytes (no ``unk``);
- ``normalization_rule_name="identity"``, ``add_dummy_prefix=False`` and
  ``remove_extra_whitespaces=False`` keep leading, trailing and repeated spaces as they are;
- newline and tab are user-defined pieces (SentencePiece splits its training input at newlines,
  so they would otherwise only ever be bytes);
- SentencePiece writes spaces as U+2581 (``▁``) and turns every ``▁`` back into a space when
  decoding, so a literal ``▁`` in the text is encoded here as its three byte pieces, which decode
  back to ``▁``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator

from glam.data.errors import DataError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
_SPACE_MARK = "\u2581"
_MAX_PIECE_CHARS = 4096  # SentencePiece skips longer training "sentences"; longer lines are cut
# what to do with a bad tokenizer file: never a retrain of one that a run was trained with
_REMAKE = (
    "put back the original if a run was trained with it (another tokenizer would change what its ids mean), "
    "else make one with `glam tokenizer train`"
)


def _sentencepiece():
    import sentencepiece

    return sentencepiece


class Tokenizer:
    """A SentencePiece ``.model`` file with lossless ``encode``/``decode``.

    ``model_proto`` (the serialised model) builds one that is not on disk yet; ``path`` is then where
    it is meant to go (``save``). Loading a missing, corrupt or wrongly-numbered model raises
    :class:`DataError`.
    """

    def __init__(self, path: str, *, model_proto: bytes | None = None):
        self.path = os.fspath(path)
        if model_proto is None and not os.path.isfile(self.path):
            raise DataError(
                f"tokenizer {self.path!r} does not exist; check the path, or make one with `glam tokenizer train "
                f"--output {self.path}`, or set data.tokenizer='' to train one into the run directory"
            )
        spm = _sentencepiece()
        try:
            if model_proto is None:
                self._sp = spm.SentencePieceProcessor(model_file=self.path)
            else:
                self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        except (OSError, RuntimeError) as exc:
            raise DataError(f"tokenizer {self.path!r} is not a valid SentencePiece model ({exc}); {_REMAKE}") from None
        ids = (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
        if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise DataError(
                f"tokenizer {self.path!r} has special ids pad/unk/bos/eos = {ids}; glam needs (0, 1, 2, 3) "
                f"(docs/design.md); {_REMAKE}"
            )
        self._space_mark_ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _SPACE_MARK.encode()]
        if UNK_ID in self._space_mark_ids:
            raise DataError(f"tokenizer {self.path!r} has no byte fallback; {_REMAKE}")

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    @property
    def vocab_size(self) -> int:
        return self._sp.vocab_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no bos/eos added)."""
        if _SPACE_MARK not in text:
            return self._sp.encode(text)
        ids: list[int] = []
        for i, part in enumerate(text.split(_SPACE_MARK)):
            if i:
                ids.extend(self._space_mark_ids)
            ids.extend(self._sp.encode(part))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``; pad, bos and eos decode to nothing."""
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    @property
    def model_proto(self) -> bytes:
        """The serialised model (the bytes of its ``.model`` file)."""
        return self._sp.serialized_model_proto()

    def save(self, path: str | None = None) -> None:
        """Write the model to ``path`` (default: ``self.path``) atomically: a temporary file, then rename."""
        path = os.fspath(path or self.path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(self.model_proto)
        os.replace(tmp, path)

    def __repr__(self) -> str:
        return f"Tokenizer({self.path!r}, vocab_size={self.vocab_size})"


def _training_sentences(docs: Iterable[str], max_chars: int) -> Iterator[str]:
    """Documents cut into SentencePiece's unit, lines of at most 4096 characters, up to ``max_chars``."""
    total = 0
    for doc in docs:
        for line in doc.split("\n"):
            for start in range(0, len(line), _MAX_PIECE_CHARS):
                piece = line[start : start + _MAX_PIECE_CHARS]
                if piece.strip():
                    yield piece
                    total += len(piece)
                    if total >= max_chars:
                        return


def train_tokenizer(
    docs: Iterable[str],
    vocab_size: int,
    out_path: str | None,
    *,
    model_type: str = "unigram",
    max_chars: int = 50_000_000,
    num_threads: int | None = None,
) -> Tokenizer:
    """Train a SentencePiece model on ``docs`` and write it atomically to ``out_path`` (None: keep it in
    memory; ``Tokenizer.save`` writes it later).

    Args:
      docs: document texts (a bounded sample: see ``sources.iter_documents``).
      vocab_size: V, including the 4 special ids, 256 byte pieces and newline/tab; the model may end
        up smaller when the text is too small to fill it (``hard_vocab_limit=False``).
      out_path: the ``.model`` file to write, or None.
      model_type: ``"unigram"`` (the GLaM tokenizer) or ``"bpe"``.
      max_chars: at most this many characters of training text are read from ``docs``.
    """
    if model_type not in ("unigram", "bpe"):
        raise DataError(f"tokenizer model_type {model_type!r}: choose 'unigram' or 'bpe'")
    if vocab_size < 300:
        raise DataError(
            f"tokenizer vocab_size={vocab_size} is too small: byte fallback alone needs 256 ids; use >= 300"
        )
    spm = _sentencepiece()
    model = io.BytesIO()
    sentences = _training_sentences(docs, max_chars)
    try:
        first = next(sentences)
    except StopIteration:
        raise DataError("no text to train the tokenizer on; check data.sources") from None
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_chain(first, sentences),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=True,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            user_defined_symbols=["\n", "\t"],
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            character_coverage=0.9995,
            hard_vocab_limit=False,
            max_sentence_length=4 * _MAX_PIECE_CHARS,
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as exc:
        raise DataError(f"tokenizer training failed: {exc}; try a smaller vocab_size or more text") from None
    tokenizer = Tokenizer(os.fspath(out_path or "<in memory>"), model_proto=model.getvalue())
    if out_path is not None:
        tokenizer.save()
    return tokenizer


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest
