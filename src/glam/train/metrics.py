"""Training metrics: window summaries, MFU, and the writers (metrics.jsonl, TensorBoard, a progress bar).

The loop keeps each step's metrics on device and fetches a whole window at a log step (the only host
synchronisation). ``summarize`` turns the window into one record:

- means over the window of loss, ce_loss, aux_loss, z_loss, grad_norm (and router_z_loss when
  moe.router_z_loss > 0); the lr of the last step;
- throughput (tokens/s) and MFU = tokens/s · FLOPs per token / (peak FLOP/s per device · devices),
  FLOPs per token from ``glam.model.flops`` (PaLM appendix B: 6·N_activated + 12·L·A·S);
- per MoE layer i (reference doc §3): ``moe/dropped_first/i``, ``moe/dropped_second/i`` (fractions of
  assignments the capacity cut dropped), ``moe/load_max_over_mean/i`` and ``moe/load_cv/i`` (expert
  load balance: 1 and 0 when perfectly balanced), ``moe/gate_entropy/i``, ``moe/unused_experts/i``;
  and ``expert_load`` [P][E] for ``glam plot``'s heat map. i counts the MoE layers in model order:
  model layer 2i (moe.layers=alternate), or layer i and ``expert_load`` [2P][E] (moe.layers=all).

Only process 0 writes. ``metrics.jsonl`` holds one JSON object per record: ``kind`` ("train" or
"eval"), ``step``, and for train records at least ``loss``, ``lr``, ``tokens_per_sec``; a value that
is not finite (a diverged loss) is written as ``null``. Readers skip and count lines that are not
JSON records (a torn last line after a crash, a damaged line), so one bad line never blocks a resume
or ``glam plot``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from glam import jsonsafe
from glam.errors import GLaMWarning

METRICS_FILE = "metrics.jsonl"
SCALARS = ("loss", "ce_loss", "aux_loss", "z_loss", "grad_norm")


def moe_summary(moe: dict) -> dict:
    """Per-layer routing statistics from window-stacked arrays [W, MoE layers, ...] (empty for dense models)."""
    if not moe:
        return {}
    out: dict = {}
    load = np.mean(moe["expert_load"], axis=0)  # [MoE layers, E], fractions of kept assignments
    mean = np.maximum(load.mean(axis=-1), 1e-12)
    per_layer = {
        "dropped_first": np.mean(moe["dropped_first"], axis=0),
        "dropped_second": np.mean(moe["dropped_second"], axis=0),
        "load_max_over_mean": load.max(axis=-1) / mean,
        "load_cv": load.std(axis=-1) / mean,
        "gate_entropy": np.mean(moe["gate_entropy"], axis=0),
        "unused_experts": np.mean(moe["unused_experts"], axis=0),
    }
    for name, values in per_layer.items():
        for i, v in enumerate(values):
            out[f"moe/{name}/{i}"] = float(v)
    out["expert_load"] = load.round(5).tolist()
    return out


def summarize(
    window: list[dict],
    seconds: float,
    timed_steps: int,
    tokens_per_step: int,
    flops_per_token: float,
    peak_flops: float,
    devices: int,
) -> dict:
    """One train record from the host copies of a window of per-step metrics.

    Throughput counts every token of the ``timed_steps`` steps that ran in ``seconds`` (the first step
    of a run compiles and is timed apart).
    """
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *window)
    record = {name: float(np.mean(stacked[name])) for name in SCALARS}
    if "router_z_loss" in stacked:  # moe.router_z_loss > 0
        record["router_z_loss"] = float(np.mean(stacked["router_z_loss"]))
    tokens_per_sec = timed_steps * tokens_per_step / seconds if timed_steps and seconds > 0 else 0.0
    record.update(
        lr=float(stacked["lr"][-1]),
        tokens_per_sec=tokens_per_sec,
        mfu=tokens_per_sec * flops_per_token / (peak_flops * devices) if peak_flops > 0 else 0.0,
        skipped_steps=int(stacked["skipped_steps"][-1]),
        nonfinite_in_window=int(np.sum(~stacked["finite"])),
        target_tokens=float(np.sum(stacked["tokens"])),
    )
    record.update(moe_summary(stacked["moe"]))
    return record


def measure_peak_flops(size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of one device on an fp32 [size, size] matmul: the MFU denominator when none is configured."""
    x = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    matmul(x).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        y = matmul(x)
    y.block_until_ready()
    return 2.0 * size**3 * repeats / (time.perf_counter() - start)


class MetricsWriter:
    """Appends records to ``RUN/metrics.jsonl`` and TensorBoard event files in ``RUN/tb`` (process 0 only).

    Both are written synchronously in the calling thread, so a failed write (a full disk, a read-only
    run directory) raises there, as an ``OSError`` naming the file, which ``glam.train.loop`` reports
    in one line. ``metrics.jsonl`` stays open for the whole run: when it is deleted or replaced while
    the run writes (``glam plot`` and resume read it), it is written back from the open copy, with a
    warning; when it is cut short in place, the warning says which steps' records are gone from it.
    """

    def __init__(self, run_dir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(run_dir, METRICS_FILE)
        self.tb_dir = os.path.join(run_dir, "tb")
        self._file = None
        self._events = None
        self._steps: list[int] = []  # first and last step this writer logged
        if enabled:
            with naming(self.path):
                self._file = open(self.path, "a+", encoding="utf-8")  # readable: see _check_file
            with naming(self.tb_dir):
                from tensorboardX.event_file_writer import EventsWriter

                os.makedirs(self.tb_dir, exist_ok=True)
                self._events = EventsWriter(os.path.join(self.tb_dir, "events"))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self._check_file()
        with naming(self.path):
            self._file.write(jsonsafe.dumps(record) + "\n")
            self._file.flush()
        self._steps = [self._steps[0] if self._steps else record["step"], record["step"]]
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar

        prefix = "train/" if record.get("kind") == "train" else ""
        with naming(self.tb_dir):
            for key, value in record.items():
                # a non-finite value is null in metrics.jsonl and left out here (tensorboardX logs each one)
                if key not in ("kind", "step") and isinstance(value, (int, float)) and math.isfinite(value):
                    event = Event(summary=scalar(prefix + key, value), step=record["step"], wall_time=time.time())
                    self._events.write_event(event)
            self._events.flush()

    def _check_file(self) -> None:
        """Put ``metrics.jsonl`` back if it was deleted or replaced since the last record; warn if it
        was cut short in place."""
        mine = os.fstat(self._file.fileno())
        try:
            there = os.stat(self.path)
        except FileNotFoundError:
            there = None
        if there is not None and (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
            if mine.st_size < self._file.tell():  # truncated in place: those bytes are gone
                lost = f"steps {self._steps[0]}-{self._steps[1]}" if self._steps else "earlier steps"
                warnings.warn(
                    f"{self.path} was cut short while the run was writing it ({mine.st_size} of "
                    f"{self._file.tell()} bytes left): the records of {lost} (and any before this run "
                    f"started) are gone from it, so `glam plot` will not show them; the TensorBoard events "
                    f"in {self.tb_dir} still have this run's values",
                    GLaMWarning,
                    stacklevel=2,
                )
                self._file.seek(0, os.SEEK_END)
            return
        data = os.pread(self._file.fileno(), mine.st_size, 0)  # the open copy still holds every record
        aside = ""
        if there is not None:  # replaced by another file: keep it beside
            aside_path = f"{self.path}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
            os.replace(self.path, aside_path)
            aside = f"; the file found in its place was moved to {aside_path}"
        with naming(self.path):
            tmp = f"{self.path}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
            self._file.close()
            self._file = open(self.path, "a+", encoding="utf-8")  # readable: see _check_file
        what, records = ("replaced" if there is not None else "deleted"), data.count(b"\n")
        warnings.warn(
            f"{self.path} was {what} while the run was writing it; wrote it back from the copy this run "
            f"still had open ({records} records, none lost){aside}",
            GLaMWarning,
            stacklevel=2,
        )

    def close(self) -> None:
        if self._events is not None:
            events, self._events = self._events, None
            with naming(self.tb_dir):
                events.close()
        if self._file is not None:
            f, self._file = self._file, None
            with naming(self.path):
                f.close()


@contextlib.contextmanager
def naming(path: str):
    """An ``OSError`` raised inside (a write to an open file has no file name) names ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = path
        raise


def _parse(lines: list[str]) -> tuple[list[tuple[str, dict]], int]:
    """(line, record) pairs of the lines that are JSON records, and the number of lines that are not.

    A torn last line (the writer was killed mid-write) is normal for an append-only log; a line
    damaged otherwise (a disk error, an edit) must not make the rest unreadable either.
    """
    records, bad = [], 0
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append((line, record))
        else:
            bad += 1
    return records, bad


def _lines(path: str) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as f:  # a damaged byte spoils one line, not the file
        return [line for line in f if line.strip()]


def trim_metrics(run_dir: str, step: int) -> int:
    """Keep only the records of steps up to ``step``, the checkpoint a run resumes from (none when it
    starts at 0): a process killed after that checkpoint may have logged later steps, or half a line,
    and the resumed run logs those steps again. Lines that are not JSON records are dropped too.
    The file is replaced atomically. Returns the number of such lines dropped, a torn last line aside."""
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.isfile(path):
        return 0
    lines = _lines(path)
    records, bad = _parse(lines)
    torn = int(bool(lines) and not lines[-1].endswith("\n") and _parse(lines[-1:])[1] == 1)
    kept = [line.rstrip("\n") + "\n" for line, r in records if step > 0 and r["step"] <= step]
    if kept != lines:
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)
    return bad - torn


def load_metrics(run_dir: str) -> tuple[list[dict], int]:
    """(records of ``RUN/metrics.jsonl``, number of lines skipped because they are not JSON records)."""
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.isfile(path):
        return [], 0
    records, bad = _parse(_lines(path))
    return [r for _, r in records], bad


def read_metrics(run_dir: str) -> list[dict]:
    """The records of ``RUN/metrics.jsonl`` (empty if there are none yet; damaged lines skipped)."""
    return load_metrics(run_dir)[0]


class Progress:
    """A live bar with ETA on a terminal (rich); one plain line per record otherwise."""

    def __init__(self, total: int, start: int, enabled: bool = True):
        self.enabled = enabled
        self.live = enabled and sys.stdout.isatty()
        self.bar = None
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self.task = self.bar.add_task("train", total=total, completed=start, info="")
            self.bar.start()

    def update(self, step: int, record: dict) -> None:
        if not self.enabled:
            return
        if record.get("kind") == "eval":
            info = f"held-out loss {record['heldout/mean']:.3f}"
        else:
            info = f"loss {record['loss']:.3f}  lr {record['lr']:.2e}  {record['tokens_per_sec']:,.0f} tok/s"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
            if record.get("kind") == "eval":
                self.bar.console.print(f"step {step}: {info}")
        else:
            print(f"step {step}: {info}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
