"""Source formats: the one registry (:data:`FORMATS`) of how a file's documents are found and read.

A :class:`Format` gives the byte ranges of a file's candidate documents (``records``) and the text of
one (``extract``); ``auto`` picks a format per file from its extension and, where formats share one,
its first bytes (:func:`detect_format`). The formats and the ``.json`` rule are listed in
:mod:`glam.data.sources`, which reads them; ``register_format`` is the one place to add one.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from glam.config import SourceConfig
from glam.data.errors import DataError


class BadRecord(Exception):
    """A JSONL line that is not a JSON object with a string text field."""


# --------------------------------------------------------------------------------------------
# Formats: the one registry (FORMATS); a format is how a file's documents are found and read
# --------------------------------------------------------------------------------------------

#: ``records(f)``: byte ranges ``(start, end)`` of the candidate documents of an open binary file
Records = Callable[[io.BufferedReader], Iterator[tuple[int, int]]]


@dataclass(frozen=True)
class Format:
    """One source format.

    ``kind`` says how documents are located: ``records`` (byte ranges from ``records``, each decoded
    and passed to ``extract``; the default), ``file`` (a whole file is one document), ``parquet``
    (table rows) or ``hf`` (a Hugging Face dataset). ``extensions`` are the file endings ``auto``
    maps to this format; where several formats claim one ending, ``sniff(first bytes)`` picks among
    them (in registry order). ``check(path, first bytes)`` may refuse a file with a clear error;
    ``prepare(path, cfg)`` gives the per-file config and how many leading records to skip (a header).
    """

    name: str
    extract: Callable[[str, SourceConfig], str] = lambda text, cfg: text
    records: Records | None = None
    kind: str = "records"
    extensions: tuple[str, ...] = ()
    sniff: Callable[[bytes], bool] | None = None
    check: Callable[[str, bytes], None] | None = None
    prepare: Callable[[str, SourceConfig], tuple[SourceConfig, int]] | None = None


FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    """Add a format (the one place to add one); its name is then valid in ``SourceConfig.format``."""
    FORMATS[fmt.name] = fmt
    return fmt


def detect_format(path: str) -> str:
    """The format ``auto`` means for one file: by extension (``text`` when none claims it), and where
    several formats share an extension (``.xml``, ``.json``) by the file's first bytes."""
    ext = os.path.splitext(path)[1].lower()
    candidates = [f for f in FORMATS.values() if ext in f.extensions]
    if len(candidates) <= 1:
        return candidates[0].name if candidates else "text"
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    for fmt in candidates:
        if fmt.sniff is None or fmt.sniff(head):
            return fmt.name
    raise DataError(
        f"{path!r} is none of the {ext} formats ({', '.join(f.name for f in candidates)}): "
        + (JSON_RULE if ext == ".json" else "check the file, or set the source's format")
    )


def _lines(f: io.BufferedReader) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line including its newline) for every line of a binary file."""
    offset = 0
    for line in f:
        yield offset, line
        offset += len(line)


def _line_records(marker: bytes | None = None) -> Records:
    """Every non-blank line (holding ``marker``, if given) is a record."""

    def records(f: io.BufferedReader) -> Iterator[tuple[int, int]]:
        for start, line in _lines(f):
            if line.strip() and (marker is None or marker in line):
                yield start, start + len(line)

    return records


def _paragraph_records(f: io.BufferedReader) -> Iterator[tuple[int, int]]:
    """Runs of non-blank lines separated by blank lines."""
    start, end = None, 0
    for offset, line in _lines(f):
        end = offset + len(line)
        if line.strip():
            start = offset if start is None else start
        elif start is not None:
            yield start, offset
            start = None
    if start is not None:
        yield start, end


def _csv_records(f: io.BufferedReader) -> Iterator[tuple[int, int]]:
    """CSV records; a quoted field may span lines, so a record ends where its quotes balance."""
    start, quotes, end = None, 0, 0
    for offset, line in _lines(f):
        end = offset + len(line)
        start = offset if start is None else start
        quotes += line.count(b'"')
        if quotes % 2 == 0:
            yield start, end
            start, quotes = None, 0
    if start is not None:
        yield start, end


def _xml_post_records(f: io.BufferedReader) -> Iterator[tuple[int, int]]:
    """From a ``<Post`` line to the line that ends the post (``<terminals`` or ``</Post>``)."""
    start, end = None, 0
    for offset, line in _lines(f):
        end = offset + len(line)
        if start is None and b"<Post" in line:
            start = offset
        if start is not None and (b"<terminals" in line or b"</Post>" in line):
            yield start, end
            start = None
    if start is not None:
        yield start, end


def _json_array_records(f: io.BufferedReader) -> Iterator[tuple[int, int]]:
    """The byte range of each element of a JSON array (the file is one JSON value, so it is read whole
    once while indexing; JSON Lines is the streamed layout for large files)."""
    raw = f.read()
    text = raw.decode("utf-8", errors="surrogateescape")  # one char per undecodable byte: offsets stay exact
    decoder, pos, offset = json.JSONDecoder(), 0, 0  # ``offset``: bytes before ``text[pos]``

    def advance(to: int) -> None:
        nonlocal pos, offset
        offset += len(text[pos:to].encode("utf-8", errors="surrogateescape"))
        pos = to

    def skip(chars: str) -> None:
        to = pos
        while to < len(text) and (text[to].isspace() or text[to] in chars):
            to += 1
        advance(to)

    skip("")
    if text[pos : pos + 1] != "[":
        raise DataError(f"{f.name!r} is not a JSON array (it does not start with '['); {JSON_RULE}")
    advance(pos + 1)
    while True:
        skip(",")
        if text[pos : pos + 1] in ("]", ""):
            return
        start = offset
        try:
            _, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(f"{f.name!r}: not valid JSON at character {exc.pos} ({exc.msg}); fix the file") from None
        advance(end)
        yield start, offset


def _first_char(head: bytes) -> bytes:
    return head.lstrip()[:1]


def _refuse_json_array(path: str, head: bytes) -> None:
    if _first_char(head) == b"[":
        raise DataError(f"{path!r} holds a JSON array, not JSON Lines; {JSON_RULE}")


JSON_RULE = (
    "glam reads a .json file as one JSON array of objects and a .jsonl file (or a .json file whose lines "
    "are objects) as JSON Lines, one object per line; name the file for its layout and use format: auto"
)


def _xml_post_text(text: str, cfg: SourceConfig) -> str:
    match = _POST_TEXT.search(text)
    return html.unescape(match.group(1)).strip() if match else ""


def _stackexchange_text(text: str, cfg: SourceConfig) -> str:
    match = _SE_ATTR.search(text)
    return _html_to_text(html.unescape(match.group(1))) if match else ""


_TAG = re.compile(r"<[^>]+>")
_POST_TEXT = re.compile(r"<Post\b[^>]*>(.*?)(?:<terminals|</Post>)", re.S)
_SE_ATTR = re.compile(r'\s(?:Body|Text)="([^"]*)"')


def _html_to_text(fragment: str) -> str:
    """Stack Exchange bodies are HTML: drop the tags, then resolve the entities."""
    return html.unescape(_TAG.sub("", fragment)).strip()


def jsonl_text(line: str, text_field: str) -> str:
    """The document of one JSON Lines record; :class:`BadRecord` (saying why) if the line is not one."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadRecord(f"not JSON ({exc.msg})") from None
    if not isinstance(value, dict) or not isinstance(value.get(text_field), str):
        raise BadRecord(f"not an object with a string field {text_field!r}")
    return value[text_field]


def json_layout(head: bytes) -> str | None:
    """The layout of a ``.json`` file from its first bytes: ``"json"`` (an array), ``"jsonl"`` (one
    object per line) or ``None`` (neither: see :data:`JSON_RULE`)."""
    if _first_char(head) == b"[":
        return "json"
    return "jsonl" if _is_json_lines(head) else None


def _is_json_lines(head: bytes) -> bool:
    """A ``.json`` file whose first line is a JSON object on its own (a file of one object per line)."""
    first = head.lstrip().split(b"\n", 1)
    if not first[0].startswith(b"{"):
        return False
    if len(first) == 1:  # a first line longer than the sniffed bytes
        return True
    try:
        return isinstance(json.loads(first[0]), dict)
    except ValueError:
        return False


def _csv_text(record: str, cfg: SourceConfig) -> str:
    """Columns of one CSV record joined by newlines (``text_field``: 0-based indices, see ``_csv_prepare``)."""
    row = next(csv.reader([record.rstrip("\r\n")]), [])
    columns = [int(c) for c in cfg.text_field.split(",")]
    return "\n".join(row[c] for c in columns if c < len(row))


def _csv_prepare(path: str, cfg: SourceConfig) -> tuple[SourceConfig, int]:
    """``text_field`` as column indices, and 1 (a header record to skip) when it named columns."""
    if re.fullmatch(r"\d+(,\d+)*", cfg.text_field):
        return cfg, 0
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        header = next(csv.reader(f), [])
    wanted = cfg.text_field.split(",")
    missing = [w for w in wanted if w not in header]
    if missing:
        raise DataError(
            f"CSV file {path!r} has no column {missing[0]!r} (header: {header}); set text_field to column names "
            "or to 0-based indices like '1,2' for a file without a header"
        )
    return dataclasses.replace(cfg, text_field=",".join(str(header.index(w)) for w in wanted)), 1


def _line_text(text: str, cfg: SourceConfig) -> str:
    return text.rstrip("\r\n")


register_format(Format("text", kind="file"))
register_format(Format("lines", _line_text, _line_records()))
register_format(Format("paragraphs", _line_text, _paragraph_records))
register_format(
    Format(
        "json",
        lambda text, cfg: jsonl_text(text, cfg.text_field),
        _json_array_records,
        extensions=(".json",),
        sniff=lambda head: json_layout(head) == "json",
    )
)
register_format(
    Format(
        "jsonl",
        lambda text, cfg: jsonl_text(text, cfg.text_field),
        _line_records(),
        extensions=(".jsonl", ".json"),
        sniff=lambda head: json_layout(head) == "jsonl",
        check=_refuse_json_array,
    )
)
register_format(Format("csv", _csv_text, _csv_records, extensions=(".csv",), prepare=_csv_prepare))
register_format(Format("parquet", kind="parquet", extensions=(".parquet", ".pq")))
register_format(
    Format("xml_posts", _xml_post_text, _xml_post_records, extensions=(".xml",), sniff=lambda h: b"<Post" in h)
)
register_format(Format("stackexchange", _stackexchange_text, _line_records(b"<row "), extensions=(".xml",)))
register_format(Format("hf", kind="hf"))
