"""A run's tokenizer: ``RUN/tokenizer.model`` and its record ``RUN/tokenizer.json``.

The record says what the tokenizer was made from (``data.tokenizer``, or the data fields its training
sample and size depend on) and the sha256 of its bytes. Every place that loads a run checks it
(``load_run_tokenizer``: inference, evaluation, serving, upcycling, export; ``load_or_train_tokenizer``:
a resumed training run), so a tokenizer that is not the run's own (retrained from other data, copied
from another run) is refused in one line that says how to get the original back, instead of decoding
the model's ids into fluent nonsense. ``glam tokenizer train`` writes into a run directory only the
tokenizer its record names.
"""

from __future__ import annotations

import hashlib
import json
import os

from glam.config import GLaMConfig
from glam.data.errors import DataError
from glam.data.sources import Source
from glam.data.tokenizer import Tokenizer

TOKENIZER_FILE = "tokenizer.model"  # the run's tokenizer, in the run directory
TOKENIZER_RECORD_FILE = "tokenizer.json"  # what it was made from (``tokenizer_record``) and its sha256


def tokenizer_record(cfg: GLaMConfig) -> dict:
    """What a run's tokenizer comes from: ``data.tokenizer``, or the fields its training sample and
    size depend on. Saved beside it in the run directory, so another config's tokenizer is detected."""
    if cfg.data.tokenizer:
        return {"data.tokenizer": cfg.data.tokenizer}
    values = json.loads(json.dumps(cfg.to_dict()))  # tuples → lists, as read back from the file
    fields = ("sources", "tokenizer_sample_docs", "heldout_docs", "seed", "on_bad_json")
    return {**{f"data.{k}": values["data"][k] for k in fields}, "model.vocab_size": cfg.model.vocab_size}


def load_or_train_tokenizer(
    cfg: GLaMConfig, run_dir: str, sources: list[Source] | None = None, *, started: bool = True
) -> Tokenizer:
    """The run's tokenizer: ``run_dir/tokenizer.model`` if the run has checkpoints and the tokenizer is
    the one its ``tokenizer.json`` records (made from this config's data, the same sha256); else
    ``data.tokenizer`` if set; else the run directory's tokenizer of a start that wrote no checkpoint
    if it was made from this config's data; else one trained on the mixture
    (``data.tokenizer_sample_docs`` documents spread over the sources by weight, ``model.vocab_size``
    pieces) and kept in memory. Nothing is written: ``save_run_tokenizer`` does that once the run's
    checks have passed, so a run that fails them leaves no tokenizer behind.

    ``started``: whether the run directory holds a checkpoint. A tokenizer of another config in a run
    directory that does not (a start that failed before its first checkpoint) is replaced, not refused:
    no checkpoint uses it.
    """
    path = os.path.join(run_dir, TOKENIZER_FILE)
    if os.path.isfile(path):
        problem = _record_problem(cfg, run_dir)
        if problem and started:
            fix = (
                "train into a new --run-dir, or undo those overrides to resume this run"
                if "other data" in problem
                else rebuild_advice(run_dir)
            )
            raise DataError(f"{problem}; {fix}")
        if problem:
            path = ""  # a failed start's tokenizer: trained anew below, written over it once the checks pass
    if cfg.data.tokenizer and not (started and path and os.path.isfile(path)):
        tokenizer = Tokenizer(cfg.data.tokenizer)
    elif path and os.path.isfile(path):  # a run's own copy, checked above: data.tokenizer may have changed since
        tokenizer = Tokenizer(path)
    else:
        from glam.data.pipeline import train_mixture_tokenizer

        trained = train_mixture_tokenizer(cfg, sources)
        tokenizer = Tokenizer(os.path.join(run_dir, TOKENIZER_FILE), model_proto=trained.model_proto)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise DataError(
            f"tokenizer {tokenizer.path!r} has {tokenizer.vocab_size} pieces but model.vocab_size="
            f"{cfg.model.vocab_size}; set model.vocab_size >= {tokenizer.vocab_size} or use a smaller tokenizer"
        )
    return tokenizer


def _read_record(run_dir: str) -> dict | None:
    """``RUN/tokenizer.json`` (None when absent: a run older than records)."""
    record_path = os.path.join(run_dir, TOKENIZER_RECORD_FILE)
    if not os.path.isfile(record_path):
        return None
    try:
        with open(record_path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{record_path} (what the run's tokenizer was made from) is unreadable ({exc}); put back the "
            "run's copy of it"
        ) from None
    if not isinstance(record, dict):
        raise DataError(f"{record_path} holds no record (a JSON object); put back the run's copy of it")
    return record


def _record_problem(cfg: GLaMConfig, run_dir: str) -> str | None:
    """Why ``run_dir/tokenizer.model`` is not ``cfg``'s tokenizer, or None: ``tokenizer.json`` records
    other data than ``cfg``'s, or a sha256 the file does not have. A tokenizer without a record (a run
    older than records) is taken as it is."""
    saved = _read_record(run_dir)
    if saved is None:
        return None
    path = os.path.join(run_dir, TOKENIZER_FILE)
    wanted = tokenizer_record(cfg)
    keys = sorted((set(saved) | set(wanted)) - {"sha256"})
    diffs = [
        f"{k}: {_short(saved.get(k))} then, {_short(wanted.get(k))} now" for k in keys if saved.get(k) != wanted.get(k)
    ]
    if diffs:
        return f"{path} was made from other data than this config ({'; '.join(diffs)})"
    return _sha_problem(path, saved)


def _sha_problem(path: str, record: dict) -> str | None:
    recorded = record.get("sha256")
    if recorded is None:  # a record older than checksums
        return None
    with open(path, "rb") as f:
        actual = hashlib.sha256(f.read()).hexdigest()
    if actual == recorded:
        return None
    return (
        f"{path} is not the tokenizer this run was trained with (sha256 {actual[:16]}..., but "
        f"{TOKENIZER_RECORD_FILE} records {recorded[:16]}...), so its ids would stand for other text"
    )


def rebuild_advice(run_dir: str) -> str:
    """How to get a run's own tokenizer back, and how glam verifies it (from ``RUN/tokenizer.json``)."""
    path = os.path.join(run_dir, TOKENIZER_FILE)
    try:
        record = _read_record(run_dir) or {}
    except DataError:
        record = {}
    if record.get("data.tokenizer"):
        how = f"copy {record['data.tokenizer']} (the run's data.tokenizer) to {path}"
    else:
        command = f"glam tokenizer train {os.path.join(run_dir, 'config.yaml')} --output {path}"
        how = f"put back a copy of the original, or rebuild it with `{command}` (the run's data, seed and vocabulary)"
    if "sha256" not in record:
        return f"{how}; no checksum was recorded for it, so glam cannot tell whether it is the same"
    same = "" if record.get("data.tokenizer") else ", which writes it only if it is the same"
    return f"{how}{same}; glam checks it against the sha256 in {os.path.join(run_dir, TOKENIZER_RECORD_FILE)}"


def load_run_tokenizer(run_dir: str, cfg: GLaMConfig | None = None) -> Tokenizer:
    """The tokenizer of a trained run, for inference, evaluation, serving, upcycling and export.

    ``cfg`` is the config of the checkpoint being loaded (None: only the checksum and the file are
    checked, as an export of the tokenizer alone does). Refuses, in one line that says how to get the
    run's own tokenizer back: a missing or unreadable ``RUN/tokenizer.model``, one whose sha256 is not
    the one ``RUN/tokenizer.json`` records (a tokenizer retrained from other data decodes another
    model's ids into fluent nonsense), a record of other data than ``cfg``'s, and more pieces than
    ``model.vocab_size``.
    """
    path = os.path.join(run_dir, TOKENIZER_FILE)
    if not os.path.isfile(path):
        raise DataError(f"{path} is missing; {rebuild_advice(run_dir)}")
    problem = _record_problem(cfg, run_dir) if cfg is not None else _sha_problem(path, _read_record(run_dir) or {})
    if problem:
        raise DataError(f"{problem}; {rebuild_advice(run_dir)}")
    try:
        tokenizer = Tokenizer(path)
    except DataError as exc:
        reason = str(exc).split(";")[0]
        raise DataError(f"{reason}; {rebuild_advice(run_dir)}") from None
    if cfg is not None and tokenizer.vocab_size > cfg.model.vocab_size:  # ids past the embedding table
        raise DataError(
            f"{path} has {tokenizer.vocab_size} pieces but the checkpoint's model.vocab_size is "
            f"{cfg.model.vocab_size}; {rebuild_advice(run_dir)}"
        )
    return tokenizer


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def save_run_tokenizer(cfg: GLaMConfig, tokenizer: Tokenizer, run_dir: str) -> None:
    """Write the run's tokenizer into ``run_dir`` (unless that very tokenizer is there already), so the
    run directory alone can be served: first its record (what it was made from, and its sha256), then
    the model, each atomically (a temporary file, then rename)."""
    path = os.path.join(run_dir, TOKENIZER_FILE)
    proto = tokenizer.model_proto
    record_value = {**tokenizer_record(cfg), "sha256": hashlib.sha256(proto).hexdigest()}
    record = os.path.join(run_dir, TOKENIZER_RECORD_FILE)
    if os.path.isfile(path) and not _record_problem(cfg, run_dir):
        with open(path, "rb") as f:
            if f.read() == proto:
                if (_read_record(run_dir) or {}).get("sha256") is None:  # a run older than checksums
                    write_atomic(record, json.dumps(record_value, indent=1).encode())
                return
    write_atomic(record, json.dumps(record_value, indent=1).encode())
    tokenizer.save(path)


def write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
