"""Small, fast training setups for the tests: a two-source corpus, a config, CLI runs in subprocesses.

Test helpers, so they live with the tests (``from small_runs import ...``; pytest puts tests/ on the
path), not in the installed package.

``small_run_config(folder)`` writes a corpus of two sources (the docstrings of some standard-library
modules, split into documents), trains a 512-piece tokenizer once, and returns the path of a YAML
config (``preset: tiny`` with d_model 64, batch 8 × 64 tokens) that ``glam train`` accepts.
``SMALL_MODEL``: the override list of the small model unit tests share; ``BIAS_TRAIN`` adds a bias-balanced
training setup to it.
``run_train(...)`` runs ``python -m glam.cli.main train`` in a fresh process with a chosen number of
simulated CPU devices and returns the train records of its ``metrics.jsonl``.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import yaml

from glam.train.metrics import read_metrics

#: the small model the unit tests share (``resolve("tiny", [*SMALL_MODEL, ...])``): tiny's layout at
#: d_model 32, 2 heads of 16, F = 64, a 128-piece vocabulary; compiles and runs in seconds
SMALL_MODEL = ("model.d_model=32", "model.num_heads=2", "model.head_dim=16", "model.ffn_dim=64", "model.vocab_size=128")
#: with SMALL_MODEL: two layers trained on batches of 8 x 32 tokens with bias balancing (rate 0.01)
BIAS_TRAIN = ("model.num_layers=2", "train.seq_len=32", "train.batch_size=8", "moe.balance=bias", "moe.bias_rate=0.01")

MODULES = {
    "alpha": ("json", "collections", "itertools", "functools", "textwrap", "string", "re", "argparse"),
    "beta": ("pathlib", "os", "shutil", "tempfile", "subprocess", "logging", "dataclasses", "heapq"),
}
VOCAB = 512
TOKENIZER_DOCS = 2000


def _documents(module_names: tuple[str, ...]) -> list[str]:
    docs = []
    for name in module_names:
        module = __import__(name)
        for _, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) if callable(obj) else None
            if doc and len(doc) > 80:
                docs.append(doc)
    return docs


def write_corpus(folder: str) -> list[dict]:
    """Two JSONL sources in ``folder``; returns their ``data.sources`` entries."""
    os.makedirs(folder, exist_ok=True)
    sources = []
    for name, modules in MODULES.items():
        path = os.path.join(folder, f"{name}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for doc in _documents(modules):
                f.write(json.dumps({"text": doc}) + "\n")
        sources.append({"name": name, "path": path, "format": "jsonl"})
    return sources


def small_run_config(folder: str, **sections) -> str:
    """Write corpus, tokenizer and ``config.yaml`` into ``folder``; ``sections`` override config sections."""
    from glam.config import merge_dict
    from glam.config.presets import get_preset
    from glam.data.pipeline import train_mixture_tokenizer

    sources = write_corpus(os.path.join(folder, "corpus"))
    tokenizer = os.path.join(folder, "tokenizer.model")
    values = {
        "preset": "tiny",
        "model": {"d_model": 64, "vocab_size": VOCAB},
        "data": {"sources": sources, "tokenizer": tokenizer, "heldout_docs": 4},
        "train": {"batch_size": 8, "seq_len": 64, "log_every": 1, "eval_every": 5, "eval_batches": 1},
        "checkpoint": {"every": 5, "keep": 2},
    }
    if not os.path.isfile(tokenizer):  # from the two sources alone, whatever ``sections`` change
        data = {**values["data"], "tokenizer": "", "tokenizer_sample_docs": TOKENIZER_DOCS}
        cfg = merge_dict(get_preset("tiny"), {"model": values["model"], "data": data})
        train_mixture_tokenizer(cfg, out_path=tokenizer, vocab_size=VOCAB)
    for section, fields in sections.items():
        values.setdefault(section, {}).update(fields)
    path = os.path.join(folder, "config.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(values, f)
    return path


def subprocess_env(devices: int, cache_dir: str | None = None) -> dict:
    """Environment for a child JAX process with ``devices`` simulated CPU devices."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    if cache_dir:  # later processes of one test reuse the first one's compiled programs
        env.update(JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return env


def train_command(config: str, run_dir: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "glam.cli.main", "train", config, *overrides, "--run-dir", run_dir]


def run_train(config: str, run_dir: str, *overrides: str, devices: int = 1, cache_dir: str | None = None) -> list[dict]:
    """Train in a new process; returns the train records of the run directory's metrics.jsonl."""
    result = subprocess.run(
        train_command(config, run_dir, *overrides),
        env=subprocess_env(devices, cache_dir),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"glam train failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return train_records(run_dir)


def train_records(run_dir: str) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r.get("kind") == "train"]
