"""Does a long run leak host memory? Train ``tiny`` for 2,000 steps and fit the RSS growth.

    .venv/bin/python benchmarks/memory_soak.py --steps 2000 --json /tmp/soak.json

Metrics, held-out evaluation and checkpointing stay on (``train.eval_every=100``,
``checkpoint.every=200``). The process's resident set size (``VmRSS`` of /proc/self/status; psutil is
not a dependency) is sampled at every 100th step, when the training loop writes that step's metrics
record: as it is, then after ``malloc_trim(0)`` hands freed heap pages back to the OS (glibc otherwise
keeps them, and raw RSS moves with fragmentation rather than with live memory), in total and its
anonymous part (``RssAnon``: without the pages of jaxlib and other mapped files, which grow as new code
paths are first touched). The result is the least-squares slope of each over the steps after
``--warmup`` (compilation, caches and the first checkpoints settle first), in MB per 1,000 steps:
about 0 for no leak.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import tempfile
import time

import numpy as np

import glam.train.loop as loop
from glam.config import resolve
from glam.train.metrics import MetricsWriter


def status_mb(field: str = "VmRSS") -> float:
    """A memory field of /proc/self/status in MB: VmRSS (resident set), RssAnon (its anonymous part:
    heap and arrays, without the pages of mapped libraries and files)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (this benchmark needs Linux)")


def sample(step: int, start: float) -> tuple[int, float, float, float, float]:
    """(step, VmRSS, VmRSS after malloc_trim, RssAnon after malloc_trim (MB), seconds since start)."""
    raw = status_mb()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return step, raw, status_mb(), status_mb("RssAnon"), time.perf_counter() - start


class SamplingWriter(MetricsWriter):
    """The run's metrics writer, also sampling RSS whenever it writes a train record of a 100th step."""

    samples: list[tuple[int, float, float, float, float]] = []
    start = time.perf_counter()

    def write(self, record: dict) -> None:
        super().write(record)
        if record.get("kind") == "train" and record["step"] % 100 == 0:
            self.samples.append(sample(record["step"], self.start))
            _, raw, trimmed, anon, _ = self.samples[-1]
            print(f"step {record['step']}: RSS {raw:.1f} MB; trimmed {trimmed:.1f} MB, anon {anon:.1f} MB", flush=True)


def slope_mb_per_1000_steps(samples: list, warmup: int, column: int) -> float:
    rows = np.array([(s[0], s[column]) for s in samples if s[0] > warmup])
    return float(np.polyfit(rows[:, 0], rows[:, 1], 1)[0] * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=500, help="steps left out of the fit")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--run-dir", default=None, help="default: a new temporary folder")
    parser.add_argument("--json", default=None, help="also write the samples and the slope here")
    parser.add_argument("--set", nargs="*", default=[], help="extra dotted overrides, e.g. checkpoint.every=100000")
    args = parser.parse_args()
    cfg = resolve(
        "tiny",
        [
            f"train.steps={args.steps}",
            f"train.batch_size={args.batch_size}",
            "train.log_every=10",
            "train.eval_every=100",
            "checkpoint.every=200",
            "checkpoint.keep=2",
            *args.set,
        ],
    )
    run_dir = args.run_dir or tempfile.mkdtemp(prefix="glam_soak_")
    loop.MetricsWriter = SamplingWriter  # the loop builds its writer through this name
    SamplingWriter.samples.append(sample(0, SamplingWriter.start))
    summary = loop.train(cfg, run_dir)
    samples = SamplingWriter.samples
    result = {
        "command": f"benchmarks/memory_soak.py --steps {args.steps} --batch-size {args.batch_size}",
        "run_dir": run_dir,
        "steps": summary["step"],
        "rss_mb_at_100": samples[1][1],
        "rss_mb_end": samples[-1][1],
        "slope_mb_per_1000_steps": slope_mb_per_1000_steps(samples, args.warmup, 1),
        "slope_after_malloc_trim_mb_per_1000_steps": slope_mb_per_1000_steps(samples, args.warmup, 2),
        "slope_anon_mb_per_1000_steps": slope_mb_per_1000_steps(samples, args.warmup, 3),
        "warmup_steps": args.warmup,
        "samples": samples,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
