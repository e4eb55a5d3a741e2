"""Document sources: local files (text, lines, paragraphs, JSONL, JSON, CSV, Parquet, two XML dialects) and
Hugging Face datasets, read by random access through a small index of document offsets.

A :class:`Source` never holds its corpus in memory. On first use it scans its files once (streamed,
line by line or row group by row group; a JSON array, being one JSON value, is read whole once while
it is indexed) and keeps only where each non-empty document lies:
``(file id, start, end)`` byte ranges for the text formats, ``(file id, row)`` for Parquet and
Hugging Face. ``source.document(k)`` then reads document ``k`` from disk on demand. The scan also
counts the problems it tolerates: bytes that are not UTF-8 (decoded with U+FFFD, counted, and
reported as one warning: the text policy of :mod:`glam.files`) and JSONL lines that are not JSON
(skipped and counted, or a :class:`DataError` when ``data.on_bad_json = "error"``). A file that is not
text (compressed, UTF-16, binary) or cannot be read is a :class:`DataError` naming it.

Formats: one registry, :data:`FORMATS` (``register_format`` is the one place to add one);
``SourceConfig.format`` names one, and ``auto`` picks one per file from its extension (and, where
formats share an extension, from its first bytes):

- ``text``: a file is one document.            - ``lines``: one document per non-blank line.
- ``paragraphs``: documents separated by blank lines (books, transcripts).
- ``jsonl`` (``.jsonl``): one JSON object per line, text in ``text_field``.
- ``json`` (``.json``): one JSON array of objects, text in ``text_field`` — the layout the evals'
  ``json`` reader reads (glam.evals.readers). The rule for ``.json``: a file starting with ``[`` is an
  array; one whose first line is a whole JSON object is JSON Lines (one object per line); anything
  else is a :class:`DataError` naming the rule. (``json`` is reached through ``auto`` for now: the
  config's format names are glam.config's ``SOURCE_FORMATS``.)
- ``csv``: one document per record; ``text_field`` names header columns or, with digits
  (``"1,2"``), 0-based column indices of a header-less file; the columns are joined by newlines.
- ``parquet``: one document per row, text in column ``text_field`` (needs ``pip install glam[parquet]``).
- ``xml_posts``: the text of each ``<Post>`` element (NPS Chat).
- ``stackexchange``: the HTML-escaped ``Body`` (posts) or ``Text`` (comments) of each ``<row>``,
  with the HTML tags removed (Stack Exchange data dumps).
- ``hf``: ``path = "hf:NAME[:CONFIG]"``, the ``train`` split of a Hugging Face dataset.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import glob
import html
import io
import json
import os
import re
import zlib
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from glam.config import SourceConfig
from glam.data.errors import DataError
from glam.files import REPLACEMENT, SNIFF_BYTES, check_text, decode, unreadable, warn_replaced

_REPLACEMENT_BYTES = REPLACEMENT.encode()
_CHUNK = 1 << 20


@dataclass
class SourceStats:
    """Counts of tolerated problems, filled while a source builds its index."""

    files: int = 0
    documents: int = 0
    bad_json: int = 0
    decode_replacements: int = 0


class BadRecord(Exception):
    """A JSONL line that is not a JSON object with a string text field."""


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


def resolve_paths(path: str, source_name: str = "") -> list[str]:
    """A file, a directory (every file under it, recursively) or a glob → sorted file paths.

    Hidden files (``.name``) are skipped. A missing path or a glob that matches nothing raises
    :class:`DataError`.
    """
    where = f"data source {source_name!r}: " if source_name else ""
    expanded = os.path.expanduser(path)
    if glob.has_magic(expanded):
        files = sorted(p for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))
        if not files:
            raise DataError(f"{where}the glob {path!r} matches no files; check the pattern and the working directory")
        return files
    if os.path.isfile(expanded):
        return [expanded]
    if os.path.isdir(expanded):
        files = []
        for root, dirs, names in os.walk(expanded):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files.extend(os.path.join(root, n) for n in sorted(names) if not n.startswith("."))
        if not files:
            raise DataError(f"{where}the directory {path!r} holds no files; point the source at the text")
        return files
    raise DataError(f"{where}the path {path!r} does not exist; fix data.sources[].path (a file, directory or glob)")


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


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


class Source:
    """One named source: an index of its non-empty documents and random access to them.

    ``len(source)`` is the number of documents; ``source.document(k)`` (0 <= k < len) their text.
    The index is built on first use; ``source.stats`` then holds the counts of tolerated problems.
    """

    def __init__(self, cfg: SourceConfig, on_bad_json: str = "skip"):
        self.cfg = cfg
        self.name = cfg.name
        self.weight = cfg.weight
        self.heldout_docs = cfg.heldout_docs  # -1: data.heldout_docs
        self.on_bad_json = on_bad_json
        self.stats = SourceStats()
        self._files: list[str] = []
        self._formats: list[Format] = []  # per file
        self._file_cfgs: list[SourceConfig] = []  # per file: the config its records are read with
        self._index: np.ndarray | None = None  # [D, 3] int64: file id, start, end
        self._table_cache: OrderedDict = OrderedDict()
        self._hf = None

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return f"Source({self.name!r}, path={self.cfg.path!r}, weight={self.weight})"

    @property
    def index(self) -> np.ndarray:
        if self._index is None:
            self._index = self._build_index()
            self.stats.documents = len(self._index)
        return self._index

    def document(self, k: int) -> str:
        """The text of document ``k``, read from disk."""
        file_id, start, end = (int(v) for v in self.index[k])
        fmt = self._formats[file_id]
        if fmt.kind == "hf":
            return self._hf[start][self.cfg.text_field]
        if fmt.kind == "parquet":
            return self._parquet_row(file_id, start)
        with open(self._files[file_id], "rb") as f:
            f.seek(start)
            raw = f.read(end - start)
        text = decode(raw)[0]
        return text if fmt.kind == "file" else fmt.extract(text, self._file_cfgs[file_id])

    def __iter__(self) -> Iterator[str]:
        for k in range(len(self)):
            yield self.document(k)

    # Index building --------------------------------------------------------------------------

    def _build_index(self) -> np.ndarray:
        if self.cfg.format == "hf" or self.cfg.path.startswith("hf:"):  # a dataset, not files
            rows = self._index_hf()
        else:
            self._files = resolve_paths(self.cfg.path, self.name)
            self.stats.files = len(self._files)
            rows = []
            for file_id, path in enumerate(self._files):
                try:
                    rows.extend((file_id, a, b) for a, b in self._index_path(file_id, path))
                except OSError as exc:  # a dangling link, no permission, a file removed meanwhile
                    raise unreadable(path, exc, f"data source {self.name!r}: ") from None
        if not rows:
            raise DataError(
                f"data source {self.name!r} ({self.cfg.path}) holds no non-empty documents; "
                f"check the path and the format ({self.cfg.format!r}, text_field={self.cfg.text_field!r})"
            )
        return np.asarray(rows, dtype=np.int64).reshape(-1, 3)

    def _index_path(self, file_id: int, path: str) -> Iterator[tuple[int, int]]:
        """Byte ranges (or Parquet rows) of one file's documents; a file that is not text is refused."""
        where = f"data source {self.name!r}: "
        try:
            fmt = FORMATS[detect_format(path) if self.cfg.format == "auto" else self.cfg.format]
        except DataError as exc:
            raise DataError(f"{where}{exc}") from None
        cfg, skip = fmt.prepare(path, self.cfg) if fmt.prepare else (self.cfg, 0)
        self._formats.append(fmt)
        self._file_cfgs.append(cfg)
        if fmt.kind == "parquet":
            return self._index_parquet(file_id, path)
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
        check_text(path, head, where)
        if fmt.check:
            fmt.check(path, head)
        if fmt.kind == "file":
            return self._index_whole_file(path)
        return self._index_records(path, fmt, cfg, skip)

    def _index_records(self, path: str, fmt: Format, cfg: SourceConfig, skip: int) -> Iterator[tuple[int, int]]:
        """Scan one text-like file: byte ranges of its non-empty documents (the first ``skip`` records
        are a header)."""
        with open(path, "rb") as f:
            for number, (start, end) in enumerate(fmt.records(f)):
                if number < skip:
                    continue
                here = f.tell()
                f.seek(start)
                text, replaced = decode(f.read(end - start))
                f.seek(here)
                self.stats.decode_replacements += replaced
                try:
                    doc = fmt.extract(text, cfg)
                except BadRecord as exc:
                    self._bad_json(path, text, str(exc))
                    continue
                if doc.strip():
                    yield start, end

    def _bad_json(self, path: str, line: str, why: str) -> None:
        if self.on_bad_json == "error":
            raise DataError(
                f"data source {self.name!r}: a line of {path!r} is {why}: {line[:80]!r}; fix the file "
                "or set data.on_bad_json=skip to skip and count such lines"
            )
        self.stats.bad_json += 1

    def _index_whole_file(self, path: str) -> Iterator[tuple[int, int]]:
        """A whole file as one document, decoded chunk by chunk (never all at once)."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        size, nonblank, replaced = 0, False, 0
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                text = decoder.decode(chunk)
                replaced += text.count(REPLACEMENT) - chunk.count(_REPLACEMENT_BYTES)
                nonblank = nonblank or bool(text.strip())
                size += len(chunk)
            replaced += decoder.decode(b"", final=True).count(REPLACEMENT)
        self.stats.decode_replacements += max(replaced, 0)
        if nonblank:
            yield 0, size

    def _index_parquet(self, file_id: int, path: str) -> Iterator[tuple[int, int]]:
        """Rows of a Parquet file with non-empty text, read one row group at a time."""
        pq = _import_pyarrow_parquet()
        pf = pq.ParquetFile(path)
        if self.cfg.text_field not in pf.schema_arrow.names:
            raise DataError(
                f"Parquet file {path!r} has no column {self.cfg.text_field!r} "
                f"(columns: {pf.schema_arrow.names}); set text_field"
            )
        row = 0
        for group in range(pf.num_row_groups):
            values = pf.read_row_group(group, columns=[self.cfg.text_field]).column(0).to_pylist()
            for j, value in enumerate(values):
                if isinstance(value, str) and value.strip():
                    yield row + j, row + j + 1
            row += len(values)

    def _parquet_row(self, file_id: int, row: int) -> str:
        """One row of a Parquet file; the last few row groups read are cached."""
        pq = _import_pyarrow_parquet()
        key = file_id
        if key not in self._table_cache:
            pf = pq.ParquetFile(self._files[file_id])
            sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
            self._table_cache[key] = (pf, np.cumsum([0, *sizes]), OrderedDict())
        pf, bounds, groups = self._table_cache[key]
        group = int(np.searchsorted(bounds, row, side="right")) - 1
        if group not in groups:
            groups[group] = pf.read_row_group(group, columns=[self.cfg.text_field]).column(0)
            if len(groups) > 4:
                groups.popitem(last=False)
        return groups[group][row - int(bounds[group])].as_py()

    def _index_hf(self) -> list[tuple[int, int, int]]:
        """Rows of a Hugging Face dataset (``hf:NAME[:CONFIG]``, train split) with non-empty text."""
        try:
            import datasets
        except ImportError:
            raise DataError(
                f"data source {self.name!r} reads a Hugging Face dataset ({self.cfg.path}) but the 'datasets' "
                "package is not installed; run: pip install glam[hf]"
            ) from None
        name, _, config = self.cfg.path.removeprefix("hf:").partition(":")
        try:
            self._hf = datasets.load_dataset(name, config or None, split="train")
        except Exception as exc:  # datasets raises many types: network, missing dataset, bad config
            raise DataError(f"data source {self.name!r}: cannot load Hugging Face dataset {name!r}: {exc}") from None
        self._files, self._formats, self._file_cfgs, self.stats.files = [self.cfg.path], [FORMATS["hf"]], [self.cfg], 1
        rows = []
        for start in range(0, len(self._hf), 10_000):
            texts = self._hf[start : start + 10_000][self.cfg.text_field]
            rows.extend((0, start + j, start + j + 1) for j, t in enumerate(texts) if isinstance(t, str) and t.strip())
        return rows


def _import_pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading Parquet sources needs pyarrow; run: pip install glam[parquet]") from None
    return pq


def open_sources(configs: tuple[SourceConfig, ...], on_bad_json: str = "skip") -> list[Source]:
    """Build (and index) every source; an empty list or an all-empty corpus raises :class:`DataError`."""
    if not configs:
        raise DataError("no data sources; set data.sources or leave it empty to use the default corpus")
    sources = [Source(c, on_bad_json) for c in configs]
    for source in sources:
        len(source)  # build the index now, so errors surface before training starts
        warn_replaced(f"data source {source.name!r} ({source.cfg.path})", source.stats.decode_replacements)
    return sources


def iter_documents(
    sources: list[Source], limit: int, *, seed: int = 0, exclude: Mapping[str, Collection[int]] | None = None
) -> Iterator[str]:
    """Up to ``limit`` documents drawn round-robin by weight from ``sources`` (a tokenizer sample).

    Each source contributes ``limit * weight / sum(weights)`` documents (at least one, at most all it
    has), chosen by a seeded permutation so the sample spreads over the whole source; ``exclude[name]``
    lists document ids never to draw (the held-out documents: see ``glam.data.pipeline.tokenizer_sample``).
    The sources are interleaved: source s's j-th document of its n_s comes at position (j + 1/2) / n_s
    of the sample (ties in source order), so any prefix of the sample (a ``max_chars`` cut) holds each
    source in proportion to its share, not the first sources listed in full.
    """
    total = sum(s.weight for s in sources)
    picks: list[np.ndarray] = []
    for source in sources:
        want = max(1, round(limit * source.weight / total))
        order = np.random.default_rng([seed, source_key(source.name)]).permutation(len(source))
        if exclude and exclude.get(source.name) is not None:
            order = order[~np.isin(order, np.asarray(list(exclude[source.name]), dtype=order.dtype))]
        picks.append(order[:want])
    slots = [((j + 0.5) / len(p), i, int(k)) for i, p in enumerate(picks) for j, k in enumerate(p)]
    for _, i, k in sorted(slots):
        yield sources[i].document(k)


def source_key(name: str) -> int:
    """A process-independent integer for a source name (Python's ``hash`` is salted per process)."""
    return zlib.crc32(name.encode("utf-8"))
