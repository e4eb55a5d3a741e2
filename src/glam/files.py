"""The files a user names: how glam reads text and YAML, and how it checks outputs before any work.

Text (training sources, ``glam perplexity`` files, evaluation task data, ``glam generate --file``) has
one policy everywhere:

- It is read as UTF-8. Bytes that are not UTF-8 (Latin-1 text, a damaged file) decode to U+FFFD, are
  counted, and are reported: one ``warning:`` line naming the count (and ``glam data stats``'s
  ``non-utf8`` column). A few bad bytes never stop a run.
- A file that is not text is refused with one line naming it and the fix: compressed (gzip, bzip2,
  xz, zstd, zip), UTF-16 or UTF-32, or binary (a NUL byte in its first 8 KiB, git's rule). Files read
  whole (perplexity, task data, prompts) are decompressed by extension (``.gz``, ``.bz2``); training
  sources are read by random access, so they must be decompressed first.

YAML that configures glam (config files, a run's ``config.yaml``, task files, YAML inside an override)
is strict: UTF-8, valid YAML, and no key twice in one mapping (the second would silently replace the
first, section and all).

Outputs (``--output``, ``--json``, ``--run-dir``) are checked when the command line is parsed, so a
path that cannot be written fails before the work, not after it.
"""

from __future__ import annotations

import bz2
import gzip
import os
import warnings
from collections.abc import Hashable
from typing import Any

import yaml

from glam.errors import ConfigError, DataError, GLaMError, GLaMWarning

SNIFF_BYTES = 8192
REPLACEMENT = "\ufffd"
_REPLACEMENT_BYTES = REPLACEMENT.encode()

# (leading bytes, what the file is, the fix)
_SIGNATURES = (
    (b"\x1f\x8b", "gzip-compressed", "decompress it first (gunzip)"),
    (b"\xfd7zXZ\x00", "xz-compressed", "decompress it first (unxz)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it first (unzstd)"),
    (b"PK\x03\x04", "a zip archive", "extract it first (unzip)"),
    (b"\xff\xfe\x00\x00", "UTF-32 text", "glam reads UTF-8: convert it (iconv -f UTF-32 -t UTF-8)"),
    (b"\x00\x00\xfe\xff", "UTF-32 text", "glam reads UTF-8: convert it (iconv -f UTF-32 -t UTF-8)"),
    (b"\xff\xfe", "UTF-16 text", "glam reads UTF-8: convert it (iconv -f UTF-16 -t UTF-8)"),
    (b"\xfe\xff", "UTF-16 text", "glam reads UTF-8: convert it (iconv -f UTF-16 -t UTF-8)"),
)


# Text ---------------------------------------------------------------------------------------------


def not_text(head: bytes) -> str | None:
    """Why a file starting with ``head`` is not UTF-8 text (what it is, then the fix), or ``None``."""
    for magic, kind, fix in _SIGNATURES:
        if head.startswith(magic):
            return f"{kind}, not UTF-8 text; {fix}"
    if head.startswith(b"BZh") and head[4:10] == b"1AY&SY":
        return "bzip2-compressed, not UTF-8 text; decompress it first (bunzip2)"
    if b"\x00" in head[:SNIFF_BYTES]:
        return "binary (a NUL byte in its first 8 KiB), not text; point glam at text files"
    return None


def unreadable(path: str, exc: OSError, where: str = "") -> DataError:
    """One line for a file that cannot be opened (missing, a dangling link, a directory, no permission)."""
    why = exc.strerror or type(exc).__name__
    if os.path.islink(path) and not os.path.exists(path):
        why = f"a symbolic link to {os.readlink(path)!r}, which does not exist"
    return DataError(f"{where}cannot read {path!r} ({why}); fix or remove it")


def check_text(path: str, head: bytes, where: str = "") -> None:
    """Refuse ``path`` (whose first bytes are ``head``) when it is not text."""
    reason = not_text(head)
    if reason:
        raise DataError(f"{where}{path!r} is {reason}")


def decode(raw: bytes) -> tuple[str, int]:
    """UTF-8 with U+FFFD for every invalid sequence: (text, number of sequences replaced)."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        return text, text.count(REPLACEMENT) - raw.count(_REPLACEMENT_BYTES)


def warn_replaced(where: str, count: int) -> None:
    """The one warning for bytes that were not UTF-8 (``where`` names the file or source)."""
    if count:
        warnings.warn(
            f"{where}: {count} invalid UTF-8 byte sequence{'s' * (count != 1)} replaced with U+FFFD; if the text is "
            "Latin-1, convert it (iconv -f LATIN1 -t UTF-8)",
            GLaMWarning,
            stacklevel=2,
        )


def read_text(path: str, where: str = "") -> str:
    """A whole text file under the text policy (decompressed by extension, refused if not text)."""
    path = os.fspath(path)
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(os.path.splitext(path)[1].lower(), open)
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as exc:  # includes a .gz file that is not gzip (gzip.BadGzipFile)
        raise unreadable(path, exc, where) from None
    check_text(path, raw[:SNIFF_BYTES], where)
    text, replaced = decode(raw)
    warn_replaced(f"{where}{path}", replaced)
    return text


# YAML ---------------------------------------------------------------------------------------------


class _DuplicateKey(yaml.MarkedYAMLError):
    pass


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # SafeLoader reports it ("found unhashable key")
            if key in seen:
                lines = f"lines {seen[key] + 1} and {key_node.start_mark.line + 1}"
                raise _DuplicateKey(
                    problem=f"key {key!r} is given twice ({lines}): merge them, the second would replace the first"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        return f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else exc.problem
    return " ".join(str(exc).split())


def parse_yaml(text: str, where: str, error: type[GLaMError] = ConfigError) -> Any:
    """YAML text (e.g. the value of an override) → Python values; ``where`` prefixes the error."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise error(f"{where}: not valid YAML ({_yaml_problem(exc)})") from None


def load_yaml_file(path: str, what: str, error: type[GLaMError] = ConfigError) -> Any:
    """A YAML file that configures glam (``what`` names it in errors: "config file", "task file", ...)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise error(f"{what} {path!r} does not exist; check the path") from None
    except IsADirectoryError:
        raise error(f"{what} {path!r} is a directory; give the path of a YAML file") from None
    except OSError as exc:
        raise error(f"{what} {path!r} cannot be read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{what} {path!r} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise error(f"{what} {path!r} is not valid YAML ({_yaml_problem(exc)}); fix it") from None


# Outputs ------------------------------------------------------------------------------------------


def _check_creatable(path: str) -> None:
    """The nearest existing folder above ``path`` must be a writable directory."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ConfigError(f"{path!r} is under {folder!r}, which is a file; choose a path in a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{path!r}: cannot write into {folder!r} (permission denied); choose another path")


def check_output_file(path: str, example: str = "out") -> None:
    """Raise :class:`ConfigError` now if a file can never be written at ``path`` (a directory, under a file,
    a folder without write permission). ``example`` names a file to suggest inside a directory."""
    if not path:
        raise ConfigError(f"an empty path; give a file path, e.g. {example}")
    if os.path.isdir(path):
        raise ConfigError(f"{path!r} is a directory; give a file path, e.g. {os.path.join(path, example)}")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ConfigError(f"{path!r} is not writable (permission denied); choose another path")
    _check_creatable(path)


def check_output_dir(path: str) -> None:
    """Raise :class:`ConfigError` now if ``path`` cannot be used as a directory to write into."""
    if not path:
        raise ConfigError("an empty path; give a directory, e.g. runs/exp1")
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ConfigError(f"{path!r} is a file, not a directory; give a new or existing directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{path!r}: cannot write into it (permission denied); choose another directory")
        return
    _check_creatable(path)
