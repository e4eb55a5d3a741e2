"""Sources for a six-genre corpus in a fixed layout, mixed with the paper's weights.

GLaM trains on six components mixed with fixed weights (paper Table 3; reference doc §6). A corpus
laid out as ``_PARTS`` says (``web/``, ``wiki/``, ``conversations/``, ``forums/``, ``books/``,
``news/``) mirrors them at small scale. The caller says where it is (``shared_corpus_sources(root)``;
the experiments and tests pass their own ``--data-root``): nothing here assumes a location. A genre
whose files come in several formats is split into one source per format, named ``genre.part``,
sharing the genre's weight; :func:`genre_of` maps a source back to its genre for reporting.
"""

from __future__ import annotations

import os

from glam.config import SourceConfig
from glam.data.errors import DataError

#: paper Table 3: component → mixture weight
TABLE3_WEIGHTS = {"web": 0.42, "wiki": 0.06, "conversations": 0.28, "forums": 0.02, "books": 0.20, "news": 0.02}

#: (source name, path under the corpus root, format, text_field, share of the genre's weight, held-out
#: documents). Documents range from 12-token chat posts to 4,000-token phone calls, so each source holds
#: out its own number of documents: about 8,000-25,000 tokens each at a 2,048-piece vocabulary, 0.4-8% of
#: the source's tokens.
_PARTS = (
    ("web", "web/*.jsonl", "jsonl", "text", 1.0, 24),
    ("wiki", "wiki/*.txt", "lines", "text", 1.0, 64),  # one WikiText paragraph (or heading) per line
    ("conversations.dailydialog", "conversations/dailydialog/*.txt", "lines", "text", 0.5, 64),
    ("conversations.nps_chat", "conversations/nps_chat/*.xml", "xml_posts", "text", 0.25, 640),
    ("conversations.switchboard", "conversations/switchboard/transcript", "paragraphs", "text", 0.25, 3),
    ("forums.stackexchange", "forums/stackexchange/*.xml", "stackexchange", "text", 0.5, 64),
    ("forums.webtext", "forums/webtext/*.txt", "paragraphs", "text", 0.5, 48),
    ("books", "books/*/*.txt", "paragraphs", "text", 1.0, 96),  # paragraphs: whole books are too few documents
    ("news", "news/*.csv", "csv", "1,2", 1.0, 96),  # AG News: class, title, description; no header
)


def genre_of(source_name: str) -> str:
    """``conversations.nps_chat`` → ``conversations``."""
    return source_name.split(".", 1)[0]


def shared_corpus_sources(root: str) -> tuple[SourceConfig, ...]:
    """The shared corpus as sources whose genre weights are paper Table 3's, each holding out its own
    number of documents (``SourceConfig.heldout_docs``; ``data.heldout_docs`` does not apply).

    ``root`` is the ``corpus`` folder (or the ``data`` folder above it). Raises :class:`DataError`
    when it is missing.
    """
    root = os.path.expanduser(root)
    if os.path.isdir(os.path.join(root, "corpus")):
        root = os.path.join(root, "corpus")
    if not os.path.isdir(os.path.join(root, "web")):
        raise DataError(
            f"{root!r} is not a six-genre corpus folder (it has no web/); pass the folder holding web/, wiki/, "
            "conversations/, forums/, books/ and news/ (or the folder above it that holds corpus/)"
        )
    return tuple(
        SourceConfig(
            name=name,
            path=os.path.join(root, path),
            weight=TABLE3_WEIGHTS[genre_of(name)] * share,
            format=fmt,
            text_field=field,
            heldout_docs=heldout,
        )
        for name, path, fmt, field, share, heldout in _PARTS
    )
