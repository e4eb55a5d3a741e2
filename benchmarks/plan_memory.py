"""Per-device memory of the paper presets on realistic meshes, for each remat policy (`glam plan`).

Each plan compiles the full training step ahead of time on simulated CPU devices (nothing is
allocated or run), in its own process so each gets the device count it needs.

    .venv/bin/python benchmarks/plan_memory.py --json runs/plan_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CASES = [  # (preset, mesh, chips)
    ("glam-64b-64e", "64x16", 1024),
    ("glam-64b-64e", "64x8", 512),
    ("glam-8b-64e", "64x1", 64),
    ("glam-1.7b-64e", "16x1", 16),
]
POLICIES = ("full", "dots", "none")


def plan(preset: str, mesh: str, remat: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cmd = [sys.executable, "-m", "glam.cli.main", "plan", preset, "--mesh", mesh, f"model.remat={remat}", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write all results here")
    args = parser.parse_args()
    rows = []
    print("| preset | mesh (chips) | remat | args GiB | temps GiB | total GiB/chip | 32 GiB | 80 GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for preset, mesh, chips in CASES:
        for remat in POLICIES:
            p = plan(preset, mesh, remat)
            rows.append(p)
            total = p["total_gib_per_device"]
            print(
                f"| {preset} | {mesh} ({chips}) | {remat} | {p['argument_bytes'] / 2**30:.2f} | "
                f"{p['temp_bytes'] / 2**30:.2f} | {total:.2f} | {'fits' if total <= 32 else 'no'} | "
                f"{'fits' if total <= 80 else 'no'} |",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
