"""glam's SentencePiece tokenizer in the Hugging Face format (``tokenizer.json`` and its configs).

``write_hf_tokenizer(source, out_dir)`` writes what ``transformers.AutoTokenizer.from_pretrained(out_dir)``
loads with no glam and no SentencePiece installed:

- ``tokenizer.json``: a fast tokenizer built with the ``tokenizers`` library from the SentencePiece
  model: the same Unigram pieces and scores, byte fallback, spaces written as ``▁`` (glam's
  tokenizers have no dummy prefix and keep every space), newline and tab split out first (they are
  SentencePiece user-defined pieces), and a decoder that turns ``▁`` back into spaces and byte pieces
  back into UTF-8;
- ``tokenizer_config.json`` / ``special_tokens_map.json``: ``<pad>`` 0, ``<unk>`` 1, ``<s>`` 2,
  ``</s>`` 3 (docs/design.md); ``tokenizer(text)`` prepends ``<s>`` as glam's prompts and documents
  do, ``add_special_tokens=False`` gives exactly ``glam.data.tokenizer.Tokenizer.encode``;
- ``tokenizer.model``: the SentencePiece model itself, for tools that want it.

What differs from glam's tokenizer, on purpose-built strings only (docs/export.md): a literal ``▁``
(U+2581) in the text encodes as the space piece here, where glam encodes it as its three UTF-8 byte
pieces so that it decodes back to ``▁``; and the literal strings ``<pad>``, ``<unk>``, ``<s>``,
``</s>`` and ``<0xNN>`` (the names of the control and byte pieces) encode as those pieces' ids, as in
every SentencePiece tokenizer converted to this format, where glam encodes them as text. The
``tokenizers`` Unigram model matches every vocabulary entry against the text and derives the
unknown-character score from the lowest score of them all, so these pieces cannot be hidden from it
without changing how unknown characters are scored.

Ties: where two segmentations have the same Unigram score, SentencePiece's choice depends on float32
rounding along the text and ``tokenizers``' does not, so about 1 token in 7,500 of real text differs
(between segmentations of equal score that decode to the same text): ``verify_hf_tokenizer``.
``verify_hf_tokenizer`` encodes texts with both and raises ``ExportError`` on the first difference
that is not such a tie; ``write_hf_tokenizer`` calls it on the given texts (or a built-in sample).
"""

from __future__ import annotations

import json
import os

from glam.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer
from glam.errors import GLaMError

SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
SPECIAL_IDS = {"<pad>": PAD_ID, "<unk>": UNK_ID, "<s>": BOS_ID, "</s>": EOS_ID}
# SentencePiece piece types (sentencepiece_model.proto): user-defined pieces are always split out of
# the text; a byte piece stands for one byte of it.
_USER_DEFINED, _BYTE = 4, 6
SAMPLE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "  Leading spaces, trailing spaces,   and  runs of them.   ",
    "Tabs\tand\nnewlines\n\n\tmixed; digits 1234567890 and 3.14159.",
    "def f(x):\n    return {'a': [1, 2, 3]}  # a comment\n",
    "Unicode: naïve café, Straße, 東京, Ελληνικά, emoji 🙂, <b>tags</b> & a<b or x>y.",
)


class ExportError(GLaMError):
    """A run or tokenizer that cannot be exported as asked (one line for the user)."""


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ExportError(
            "the Hugging Face export needs the `tokenizers` library; install it with `pip install -e '.[export]'`"
        ) from None
    return tokenizers


def _load(source) -> Tokenizer:
    """``source``: a glam Tokenizer, a SentencePiece ``.model`` file, or a run directory holding one
    (checked against the sha256 its ``tokenizer.json`` records: ``glam.data.run_tokenizer``)."""
    if isinstance(source, Tokenizer):
        return source
    path = os.fspath(source)
    if os.path.isdir(path):
        from glam.data.pipeline import TOKENIZER_FILE
        from glam.data.run_tokenizer import load_run_tokenizer

        if not os.path.isfile(os.path.join(path, TOKENIZER_FILE)):
            raise ExportError(f"{path!r} has no {TOKENIZER_FILE}; give a glam run directory or a .model file")
        return load_run_tokenizer(path)  # refuses a tokenizer that is not the one RUN/tokenizer.json records
    return Tokenizer(path)


def _model_proto(tokenizer: Tokenizer):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tokenizer.model_proto)
    return proto


def build_fast_tokenizer(source):
    """A ``tokenizers.Tokenizer`` that encodes as glam's SentencePiece model (see the module doc)."""
    tk = _tokenizers()
    tokenizer = _load(source)
    proto = _model_proto(tokenizer)
    if proto.trainer_spec.model_type != 1:  # 1 = UNIGRAM; glam's default and the GLaM tokenizer
        raise ExportError(
            f"{tokenizer.path}: only Unigram SentencePiece models export (this one is type "
            f"{proto.trainer_spec.model_type}); a model trained with it cannot be exported (a new tokenizer would "
            "not match the model's embedding rows)"
        )
    spec = proto.normalizer_spec
    if spec.add_dummy_prefix or spec.remove_extra_whitespaces or spec.name != "identity":
        raise ExportError(
            f"{tokenizer.path}: only glam's lossless settings export (identity normalisation, no dummy prefix, "
            "spaces kept); a model trained with this tokenizer cannot be exported (a new tokenizer would not "
            "match the model's embedding rows)"
        )
    vocab = [(piece.piece, piece.score) for piece in proto.pieces]  # control and byte pieces score 0
    fast = tk.Tokenizer(tk.models.Unigram(vocab, unk_id=UNK_ID, byte_fallback=True))
    fast.normalizer = tk.normalizers.Replace(" ", "\u2581")
    fast.pre_tokenizer = None  # one Viterbi pass over the whole text, as SentencePiece does
    fast.decoder = tk.decoders.Sequence(
        [tk.decoders.Replace("\u2581", " "), tk.decoders.ByteFallback(), tk.decoders.Fuse()]
    )
    user = [p.piece for p in proto.pieces if p.type == _USER_DEFINED]
    fast.add_tokens([tk.AddedToken(p, normalized=False, special=False) for p in user])
    fast.add_special_tokens([tk.AddedToken(p, normalized=False, special=True) for p in SPECIAL_IDS])
    fast.post_processor = tk.processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
    )
    for piece, token_id in SPECIAL_IDS.items():
        assert fast.token_to_id(piece) == token_id, (piece, fast.token_to_id(piece))
    return fast


def tokenizer_config(model_max_length: int | None = None) -> dict:
    """``tokenizer_config.json``: the special tokens, and <s> prepended by ``tokenizer(text)``."""
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **SPECIAL_TOKENS,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "padding_side": "left",
    }
    if model_max_length:
        config["model_max_length"] = model_max_length
    return config


def write_hf_tokenizer(
    source, out_dir: str, *, model_max_length: int | None = None, verify_texts=SAMPLE_TEXTS
) -> list[str]:
    """Write ``source``'s tokenizer (a glam ``Tokenizer``, a ``.model`` file or a run directory) into
    ``out_dir`` in the Hugging Face format; returns the file names written.

    The ids are checked against glam's own ``encode`` on ``verify_texts`` before anything is written
    (``ExportError`` on the first difference that is not a tie: ``verify_hf_tokenizer``). Existing
    files of the same names are replaced; the caller decides whether ``out_dir`` may hold anything
    (``glam export`` refuses a non-empty folder).
    """
    tokenizer = _load(source)
    fast = build_fast_tokenizer(tokenizer)
    verify_hf_tokenizer(tokenizer, fast, verify_texts)
    os.makedirs(out_dir, exist_ok=True)
    fast.save(os.path.join(out_dir, "tokenizer.json"))
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), tokenizer_config(model_max_length))
    _write_json(os.path.join(out_dir, "special_tokens_map.json"), SPECIAL_TOKENS)
    tokenizer.save(os.path.join(out_dir, "tokenizer.model"))
    return ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"]


def verify_hf_tokenizer(tokenizer: Tokenizer, fast, texts) -> dict:
    """Raise ``ExportError`` unless ``fast`` encodes each of ``texts`` as glam does, up to ties, and
    decodes the ids back to glam's text. Returns counts: texts, tokens, texts and tokens that differ.

    A tie is a stretch where the two encodings differ but have the same Unigram score (e.g. ``>>>`` as
    ``>`` ``>>`` or ``>>`` ``>``): SentencePiece sums scores in float32 along the whole text, so its
    choice between equal-score segmentations depends on rounding at that point; ``tokenizers`` sums in
    float64. Both decode to the same text. On the test corpus about 1 token in 7,500 is such a tie
    (docs/export.md).
    """
    proto = _model_proto(tokenizer)
    scores = [p.score for p in proto.pieces]
    widths = [1 if p.type == _BYTE else len(p.piece.encode()) for p in proto.pieces]  # bytes of normalised text
    counts = {"texts": 0, "tokens": 0, "texts_differing": 0, "tokens_differing": 0}
    for text in texts:
        want = tokenizer.encode(text)
        got = fast.encode(text, add_special_tokens=False).ids
        counts["texts"] += 1
        counts["tokens"] += len(want)
        if got != want:
            counts["texts_differing"] += 1
            for ours, theirs in _differing_stretches(want, got, widths):
                s_ours, s_theirs = sum(scores[i] for i in ours), sum(scores[i] for i in theirs)
                tie = abs(s_ours - s_theirs) <= 1e-4 * max(1.0, abs(s_ours))
                if not tie or tokenizer.decode(ours) != tokenizer.decode(theirs):
                    raise ExportError(
                        f"the exported tokenizer encodes {text[:60]!r} differently from glam's "
                        f"(got {theirs[:4]}, glam {ours[:4]}); please report this with the text"
                    )
                counts["tokens_differing"] += max(len(ours), len(theirs))
        if fast.decode(got, skip_special_tokens=True) != tokenizer.decode(want):
            raise ExportError(f"the exported tokenizer decodes {text[:60]!r} differently from glam's")
    return counts


def _differing_stretches(a: list[int], b: list[int], widths: list[int]):
    """Pairs of id stretches of ``a`` and ``b`` that cover the same span of text and differ, cut at the
    offsets where both encodings have a token boundary."""
    i = j = 0
    while i < len(a) or j < len(b):
        i0, j0, end_a, end_b = i, j, 0, 0
        while True:  # grow both stretches until they end at the same offset
            if end_a <= end_b and i < len(a):
                end_a += widths[a[i]]
                i += 1
            elif j < len(b):
                end_b += widths[b[j]]
                j += 1
            else:
                break
            if end_a == end_b:
                break
        if a[i0:i] != b[j0:j]:
            yield a[i0:i], b[j0:j]


def _write_json(path: str, value: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
        f.write("\n")
