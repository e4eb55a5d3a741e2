"""The embedded default corpus: the documentation of the installed Python standard library.

When ``data.sources`` is empty, ``glam train`` trains on text every machine with Python already has,
with no download and no third-party text in the repository: the docstrings of the standard library's
modules, classes, functions and methods, collected with ``inspect``. They are split by domain into
named sources with weights, so that the mixture (paper §6) is visible even in the default run.

The corpus is built once per Python version, in a subprocess (importing ~250 modules has side effects
we keep out of the training process), in a deterministic order (sorted module and member names,
memory addresses removed from signatures), and cached as JSONL files, one document per line::

    <cache_dir>/<python version>/{text,data,system,language,net,numeric,reference,other}.jsonl

Run ``python -m glam.data.default_corpus DIR`` to build it by hand.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator

from glam.config import SourceConfig
from glam.data.errors import DataError

#: domain → (weight, top-level modules; packages include their submodules)
DOMAINS: dict[str, tuple[float, tuple[str, ...]]] = {
    "text": (
        0.2,
        (
            "string",
            "re",
            "difflib",
            "textwrap",
            "unicodedata",
            "stringprep",
            "codecs",
            "locale",
            "gettext",
            "html",
            "xml",
            "shlex",
            "pydoc",
            "email",
        ),
    ),
    "data": (
        0.2,
        (
            "collections",
            "heapq",
            "bisect",
            "array",
            "weakref",
            "types",
            "copy",
            "pprint",
            "reprlib",
            "enum",
            "graphlib",
            "json",
            "csv",
            "configparser",
            "tomllib",
            "plistlib",
            "pickle",
            "copyreg",
            "shelve",
            "dbm",
            "sqlite3",
            "zlib",
            "gzip",
            "bz2",
            "lzma",
            "zipfile",
            "tarfile",
            "dataclasses",
            "datetime",
            "zoneinfo",
            "calendar",
            "struct",
            "base64",
            "binascii",
            "hashlib",
            "hmac",
            "secrets",
            "mailbox",
            "mimetypes",
            "quopri",
            "uu",
        ),
    ),
    "system": (
        0.2,
        (
            "os",
            "io",
            "time",
            "argparse",
            "getopt",
            "logging",
            "getpass",
            "platform",
            "errno",
            "ctypes",
            "threading",
            "multiprocessing",
            "concurrent",
            "subprocess",
            "sched",
            "queue",
            "contextvars",
            "signal",
            "mmap",
            "sys",
            "sysconfig",
            "shutil",
            "pathlib",
            "fileinput",
            "stat",
            "filecmp",
            "tempfile",
            "glob",
            "fnmatch",
            "linecache",
            "tracemalloc",
            "resource",
            "selectors",
            "select",
            "pwd",
            "grp",
            "posixpath",
        ),
    ),
    "language": (
        0.2,
        (
            "builtins",
            "functools",
            "itertools",
            "operator",
            "contextlib",
            "abc",
            "atexit",
            "traceback",
            "gc",
            "inspect",
            "dis",
            "ast",
            "symtable",
            "token",
            "tokenize",
            "keyword",
            "typing",
            "unittest",
            "doctest",
            "pdb",
            "bdb",
            "timeit",
            "trace",
            "importlib",
            "pkgutil",
            "runpy",
            "warnings",
            "code",
            "codeop",
            "pickletools",
            "compileall",
            "py_compile",
        ),
    ),
    "net": (
        0.1,
        (
            "asyncio",
            "socket",
            "ssl",
            "http",
            "urllib",
            "ftplib",
            "poplib",
            "imaplib",
            "smtplib",
            "uuid",
            "socketserver",
            "xmlrpc",
            "ipaddress",
            "wsgiref",
            "webbrowser",
        ),
    ),
    "numeric": (0.1, ("numbers", "math", "cmath", "decimal", "fractions", "random", "statistics")),
    "reference": (0.2, ()),  # the language reference topics of ``help()`` (pydoc_data.topics)
    "other": (0.1, ("*",)),  # every other standard-library module (``sys.stdlib_module_names``)
}

#: never imported: they open windows or browsers, print on import, or are tests and tools
_SKIP = re.compile(
    r"(^|\.)(tests?|idle_test|__main__|_[a-z_0-9]*)($|\.)"
    r"|^(antigravity|this|idlelib|tkinter|turtle|turtledemo|lib2to3|ensurepip|venv|msilib|winreg|winsound|msvcrt)"
)
_MIN_DOC_CHARS = 40


CORPUS_FORMAT = 2  # bump when the extraction changes, so stale caches are rebuilt


def corpus_dir(cache_dir: str) -> str:
    """The cache folder of the running Python version and corpus format."""
    v = sys.version_info
    version = f"python{v.major}.{v.minor}.{v.micro}-v{CORPUS_FORMAT}"
    return os.path.join(os.path.expanduser(cache_dir), version)


def default_cache_dir() -> str:
    """``$GLAM_CACHE_DIR`` or ``$XDG_CACHE_HOME/glam`` or ``~/.cache/glam``, plus ``default_corpus``."""
    base = os.environ.get("GLAM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "glam"
    )
    return os.path.join(base, "default_corpus")


def default_sources(cache_dir: str | None = None) -> tuple[SourceConfig, ...]:
    """The default corpus as named, weighted sources; builds it into ``cache_dir`` on first use."""
    folder = corpus_dir(cache_dir or default_cache_dir())
    if not os.path.isfile(os.path.join(folder, "MANIFEST.json")):
        _build_in_subprocess(folder)
    total = sum(weight for weight, _ in DOMAINS.values())  # weights as shares summing to 1
    return tuple(
        SourceConfig(
            name=f"stdlib-{domain}", path=os.path.join(folder, f"{domain}.jsonl"), weight=weight / total, format="jsonl"
        )
        for domain, (weight, _) in DOMAINS.items()
    )


def _build_in_subprocess(folder: str) -> None:
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "glam.data.default_corpus", folder]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    if result.returncode != 0 or not os.path.isfile(os.path.join(folder, "MANIFEST.json")):
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise DataError(
            f"building the default corpus into {folder!r} failed ({' | '.join(tail)}); set data.sources "
            "to your own text, or GLAM_CACHE_DIR to a writable folder"
        )


# --------------------------------------------------------------------------------------------
# Collection (runs in the subprocess)
# --------------------------------------------------------------------------------------------


def _module_names(roots: tuple[str, ...]) -> list[str]:
    """The roots and, for packages, their importable submodules, sorted; skipped names left out."""
    names = []
    for root in roots:
        module = _import(root)
        if module is None:
            continue
        names.append(root)
        if hasattr(module, "__path__"):
            for info in pkgutil.walk_packages(module.__path__, prefix=f"{root}.", onerror=lambda _: None):
                if not _SKIP.search(info.name):
                    names.append(info.name)
    return sorted(set(names))


def _import(name: str):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except BaseException:  # a module may raise anything on import (ImportError, SystemExit, OSError)
        return None


def _signature(obj) -> str:
    """``(a, b=1, *args, key=...)``: names and simple literal defaults only.

    Other defaults (``os.environ``, objects, file paths) are shown as ``...``: their reprs depend on the
    machine, and the corpus must be the same on every machine with the same Python.
    """
    try:
        params = inspect.signature(obj).parameters.values()
    except Exception:  # C signatures can reference names that fail to evaluate
        return "(...)"
    parts, star_done = [], False
    for p in params:
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
        star_done = star_done or p.kind in (p.VAR_POSITIONAL, p.KEYWORD_ONLY)
        name = {p.VAR_POSITIONAL: f"*{p.name}", p.VAR_KEYWORD: f"**{p.name}"}.get(p.kind, p.name)
        if p.default is not p.empty:
            simple = isinstance(p.default, (type(None), bool, int, float, str, bytes)) and len(repr(p.default)) <= 40
            # Paths (e.g. sys.executable as platform.architecture's default) differ between machines.
            simple = simple and not (isinstance(p.default, str) and os.sep in p.default)
            name += f"={p.default!r}" if simple else "=..."
        parts.append(name)
    return f"({', '.join(parts)})"


def _defined_here(module, obj) -> bool:
    """True for objects the module defines, or takes from a private C accelerator (``_json``, ``posix``)."""
    owner = getattr(obj, "__module__", None) or ""
    return owner == module.__name__ or owner.startswith("_") or owner in ("posix", "nt")


def _object_docs(module, seen: set[int]) -> list[str]:
    """One document for the module's docstring and one per public class or function it defines.

    ``seen`` holds the ids of objects already documented under another module (re-exports).
    """
    docs = []
    if inspect.getdoc(module):
        docs.append(f"Module {module.__name__}\n\n{inspect.getdoc(module)}")
    public = getattr(module, "__all__", None)
    for name in sorted(vars(module)):
        obj = vars(module)[name]
        if name.startswith("_") or (public is not None and name not in public) or not _defined_here(module, obj):
            continue
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if inspect.isclass(obj):
            docs.append(_class_doc(module.__name__, name, obj))
        elif inspect.isroutine(obj) and inspect.getdoc(obj):
            docs.append(f"{module.__name__}.{name}{_signature(obj)}\n\n{inspect.getdoc(obj)}")
    return [d for d in docs if len(d) >= _MIN_DOC_CHARS]


def _class_doc(module_name: str, name: str, cls) -> str:
    """A class's docstring followed by the docstrings of the methods it defines itself."""
    parts = [f"class {module_name}.{name}{_signature(cls)}\n\n{inspect.getdoc(cls) or ''}".rstrip()]
    for attr in sorted(vars(cls)):
        member = vars(cls)[attr]
        if attr.startswith("_") and attr != "__init__":
            continue
        func = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
        if (inspect.isroutine(func) or isinstance(member, property)) and member.__doc__:
            doc = inspect.cleandoc(member.__doc__)
            sig = "" if isinstance(member, property) else _signature(func)
            parts.append(f"{name}.{attr}{sig}\n    {doc.replace(chr(10), chr(10) + '    ')}")
    return "\n\n".join(parts)


def _domain_docs(roots: tuple[str, ...], seen: set[int]) -> Iterator[tuple[str, str]]:
    """(module name, document) pairs of one domain; no roots means the language reference topics."""
    if roots == ("*",):
        listed = {m for _, names in DOMAINS.values() for m in names}
        roots = tuple(sorted(m for m in sys.stdlib_module_names - listed if not _SKIP.search(m)))
    if not roots:
        from pydoc_data.topics import topics

        for name in sorted(topics):
            if len(topics[name].strip()) >= _MIN_DOC_CHARS:
                yield "pydoc_data.topics", topics[name].strip()
        return
    for module_name in _module_names(roots):
        module = _import(module_name)
        for doc in _object_docs(module, seen) if module is not None else []:
            yield module_name, doc


def build(folder: str) -> dict[str, int]:
    """Collect every domain into ``folder`` (atomically: a temporary folder renamed at the end)."""
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".building-", dir=parent)
    sizes, seen = {}, set()
    for domain, (_, roots) in DOMAINS.items():
        size = 0
        with open(os.path.join(tmp, f"{domain}.jsonl"), "w", encoding="utf-8") as f:
            for module_name, doc in _domain_docs(roots, seen):
                f.write(json.dumps({"text": doc, "module": module_name}, ensure_ascii=False) + "\n")
                size += len(doc)
        sizes[domain] = size
    with open(os.path.join(tmp, "MANIFEST.json"), "w") as f:
        json.dump({"python": sys.version, "chars": sizes}, f, indent=1)
    if os.path.isdir(folder):  # another process finished first: keep its copy
        return sizes
    os.replace(tmp, folder)
    return sizes


if __name__ == "__main__":
    sys.stdout = open(os.devnull, "w")  # modules that print on import must not garble the report
    result = build(sys.argv[1])
    sys.stderr.write(json.dumps(result) + "\n")
