"""Results output: category averages as in the paper, a ``rich`` table, and an atomic JSON file.

GLaM (Table 1 and its appendix) averages tasks per category, NLG and NLU, and per group: open-domain
QA, cloze and completion, Winograd-style, commonsense reasoning, in-context reading comprehension,
SuperGLUE and NLI. Values are fractions in [0, 1]; the table shows them as percentages like the paper.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from glam import jsonsafe

GROUP_TITLES = {
    "open_domain_qa": "Open-domain QA",
    "cloze_completion": "Cloze and completion",
    "winograd_style": "Winograd-style",
    "commonsense": "Commonsense reasoning",
    "reading_comprehension": "In-context reading comprehension",
    "superglue": "SuperGLUE",
    "nli": "Natural language inference",
}


def averages(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | int]]:
    """Mean main metric per category, per group and overall: ``{key: {"value": mean, "tasks": count}}``."""
    buckets: dict[str, list[float]] = {}
    for row in rows:
        for key in ("all", row["category"], f"group:{row['group']}"):
            buckets.setdefault(key, []).append(row["value"])
    return {key: {"value": sum(v) / len(v), "tasks": len(v)} for key, v in buckets.items()}


def results_table(results: dict[str, Any]) -> Table:
    """The per-task table (task, shots, metric, value, n, few-shot source)."""
    table = Table(title="glam evaluation", show_lines=False)
    for column in ("task", "shots", "metric", "value", "n", "few-shot source"):
        table.add_column(column, justify="right" if column in ("shots", "value", "n") else "left")
    for row in results["tasks"].values():
        shots, used = str(row["shots"]), row.get("shots_used")
        if used and used["min"] < row["shots"]:  # fewer demonstrations than asked (pool or context too small)
            shots += f" ({used['min']}-{used['max']} used)"
        table.add_row(
            row["task"],
            shots,
            row["metric"],
            f"{100 * row['value']:.1f}",
            str(row["n"]),
            row["fewshot_source"],
        )
    return table


def averages_table(results: dict[str, Any]) -> Table:
    """Averages per category and paper group."""
    table = Table(title="averages (as in the paper: mean of each task's main metric)")
    table.add_column("over")
    table.add_column("tasks", justify="right")
    table.add_column("average", justify="right")
    for key, avg in sorted(results["averages"].items(), key=lambda kv: (kv[0].startswith("group:"), kv[0])):
        title = GROUP_TITLES.get(key.removeprefix("group:"), key.removeprefix("group:"))
        table.add_row(title, str(avg["tasks"]), f"{100 * avg['value']:.1f}")
    return table


def print_results(results: dict[str, Any], console: Console | None = None) -> None:
    """Print the task table and the averages."""
    console = console or Console()
    console.print(results_table(results))
    console.print(averages_table(results))


def write_json(results: dict[str, Any], path: str | Path) -> None:
    """Write ``results`` to ``path`` atomically (a temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(jsonsafe.dumps(results, indent=2) + "\n")  # NaN → null: valid JSON
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
