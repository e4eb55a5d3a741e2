"""Plumbing of experiments/glam_claims.py: the plan, the numbers it collects, the report, skip-resume.

The end-to-end test trains one 2-step model on the real corpus (skipped when ../shared/data is absent);
everything else runs on synthetic metrics.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from glam.config import resolve
from glam.model.flops import model_size

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "glam_claims.py"


@pytest.fixture(scope="module")
def claims():
    spec = importlib.util.spec_from_file_location("glam_claims", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["glam_claims"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_plan_compares_equal_activated_parameters(claims):
    scale = claims.SCALES["small"]
    runs = {r.name: r for r in claims.plan_runs(scale)}
    assert list(runs) == [
        "dense",
        "glam-e4",
        "glam-e8",
        "glam-e16",
        "glam-e32",
        "glam-e32-batchgroup",
        "abl-random",
        "abl-cf1.0",
        "abl-cf1.25",
        "abl-zloss",
        "abl-seed1",
    ]
    assert {r.steps for r in runs.values() if r.group == "main"} == {scale.steps}
    assert {r.steps for r in runs.values() if r.group == "ablation"} == {scale.ablation_steps}
    # the ablation baseline is read from glam-e8's records at ablation_steps: both must be logged there
    assert scale.ablation_steps % scale.eval_every == 0 and scale.ablation_steps % scale.log_every == 0
    base = resolve("tiny", ["model.vocab_size=4096", "model.ffn_dim=768"])
    sizes = {name: model_size(claims.run_config(base, spec)) for name, spec in runs.items() if spec.group == "main"}
    dense = sizes.pop("dense").params_activated
    for name, size in sizes.items():  # equal up to the router, E·M per MoE layer
        assert abs(size.params_activated - dense) / dense < 0.01, name
        assert size.params_total > dense


def _fake_run(run_dir: Path, steps: int, experts: int, loss: float) -> None:
    """A metrics.jsonl as the training loop writes it, with a resumed tail logged twice."""
    run_dir.mkdir(parents=True)
    records = []
    for step in range(0, steps + 1):
        records.append({"kind": "eval", "step": step, "heldout/web": loss - step, "heldout/mean": loss - step})
        if step:
            train = {"kind": "train", "step": step, "loss": loss, "ce_loss": loss - step, "tokens_per_sec": 100.0}
            if experts:
                train.update({"moe/dropped_first/0": 0.1, "moe/dropped_second/0": 0.3, "z_loss": 50.0})
                train.update({"moe/load_max_over_mean/0": 1.5, "moe/gate_entropy/0": 1.0})
                train["expert_load"] = [[1 / experts] * experts]
            records.append(train)
    records.append(records[-1])  # a resume re-logs the steps after its last checkpoint
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_report_from_synthetic_runs(claims, tmp_path):
    scale = claims.Scale(steps=2, ablation_steps=1, experts=(4, 8), log_every=1, eval_every=1)
    runs = claims.plan_runs(scale)
    for spec in runs:
        _fake_run(tmp_path / "out" / spec.name, spec.steps, spec.experts, loss=5.0 + spec.experts / 100)
    results = claims.write_report(str(tmp_path / "out"), scale, runs, str(tmp_path / "plots"))
    assert results["main"]["dense"]["heldout"] == {"web": 3.0, "mean": 3.0}
    assert results["main"]["glam-e8"]["dropped_second"] == pytest.approx(0.3)
    baseline = results["ablation"]["abl-baseline"]  # glam-e8 read at step 1
    assert baseline["finished"] and baseline["heldout"]["mean"] == pytest.approx(4.08)
    assert len(baseline["expert_load"]) == 1
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| GLaM E=8 | 3.0800 |" in report and "| capacity 1.0 |" in report
    plots = {p.name for p in (tmp_path / "plots").iterdir()}
    assert plots == {
        "heldout_main.png",
        "heldout_ablation.png",
        "loss_vs_experts.png",
        "expert_load.png",
        "drop_rates.png",
    }


# ~21 s on a quiet 2-core CPU, mostly compiling the training step; 70-90 s when the machine is loaded
def test_two_step_sweep_trains_evaluates_and_reuses(claims, shared_data, tmp_path):
    out, plots = tmp_path / "claims", tmp_path / "plots"
    results = claims.run_sweep(str(out), str(shared_data), claims.SCALES["smoke"], str(plots), only=["dense"])
    dense = results["main"]["dense"]
    assert dense["finished"] and set(dense["heldout"]) >= {"mean", "web", "books", "news"}
    assert dense["zeroshot"]["tasks"]["copa"]["n"] == 2
    assert (out / "report.md").is_file() and (plots / "heldout_main.png").is_file()
    metrics = (out / "dense" / "metrics.jsonl").read_text()
    claims.run_sweep(str(out), str(shared_data), claims.SCALES["smoke"], str(plots), only=["dense"])
    assert (out / "dense" / "metrics.jsonl").read_text() == metrics  # the finished run was reused
    assert len(json.loads((out / "sweep.json").read_text())["invocations"]) == 2
