"""glam.train.plots: the plots of a run from its metrics.jsonl, the library behind `glam plot` and the demo."""

from __future__ import annotations

import json

import pytest

from glam.errors import GLaMError
from glam.train.plots import plot_run


def test_plot_run_writes_both_plots_and_notes_damaged_lines(tmp_path):
    load = [[0.5, 0.25, 0.25, 0.0], [0.25, 0.25, 0.25, 0.25]]  # [P=2, E=4]
    records = [{"kind": "train", "step": s, "loss": 5.0 - s, "expert_load": load} for s in (1, 2, 3)]
    records.append({"kind": "eval", "step": 3, "heldout/web": 4.5, "heldout/mean": 4.5})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "{torn")
    notes = []
    paths = plot_run(str(tmp_path), log=notes.append)
    assert paths == [str(tmp_path / "plots" / "loss.png"), str(tmp_path / "plots" / "expert_load.png")]
    assert all((tmp_path / "plots" / name).stat().st_size > 5_000 for name in ("loss.png", "expert_load.png"))
    assert notes == [f"note: skipped 1 damaged line of {tmp_path}/metrics.jsonl"]


def test_plot_run_of_a_dense_run_has_no_expert_load_and_an_empty_run_is_an_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "loss": 3.0}) + "\n")
    assert plot_run(str(tmp_path)) == [str(tmp_path / "plots" / "loss.png")]
    with pytest.raises(GLaMError, match="has no metrics.jsonl records; train first"):
        plot_run(str(tmp_path / "nothing"))
