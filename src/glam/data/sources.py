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

Formats: one registry, :data:`glam.data.formats.FORMATS` (``register_format`` there is the one place to add
one);
``SourceConfig.format`` names one, and ``auto`` picks one per file from its extension (and, where
formats share an extension, from its first bytes):

- ``text``: a file is one document.            - ``lines``: one document per non-blank line.
- ``paragraphs``: documents separated by blank lines (books, transcripts).
- ``jsonl`` (``.jsonl``): one JSON object per line, text in ``text_field``.
- ``json`` (``.json``): one JSON array of objects, text in ``text_field`` — the layout the evals'
  ``json`` reader reads (glam.evals.readers). The rule for ``.json``: a file starting with ``[`` is an
  array; one whose first line is a whole JSON object is JSON Lines (one object per line); anything
  else is a :class:`DataError` naming the rule.
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
import glob
import os
import zlib
from collections import OrderedDict
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from glam.config import SourceConfig
from glam.data.errors import DataError
from glam.data.formats import FORMATS, BadRecord, Format, detect_format
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
