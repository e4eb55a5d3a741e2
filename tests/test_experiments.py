"""Plumbing of experiments/glam_claims.py and claims_report.py: the plan, the verdicts, skip-resume.

The end-to-end test trains one 4-step model on the real corpus (skipped when ../shared/data is absent);
the report test runs on synthetic run folders whose numbers are chosen by hand.
"""

import json
from pathlib import Path

import claims_report
import glam_claims
import numpy as np
import pytest
import routing_sweep
import yaml

from glam.model.flops import model_size

# experiments/ is on the path (pyproject's pytest pythonpath), as it is for `python experiments/X.py`


@pytest.fixture(scope="module")
def claims():
    return glam_claims


def test_powered_plan_is_sized_and_controlled(claims):
    scale = claims.SCALES["powered"]
    runs = claims.plan_runs(scale)
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == 15 + 9  # d64: 9 configs, 3 of them x 3 seeds; d32: 3 x 3
    assert all(s.eval_every % scale.log_every == 0 for s in scale.sizes)
    assert names[:4] == ["d64-dense-total-s0", "d64-dense-s0", "d64-e8-s0", "d64-e2-s0"]  # longest, headline
    for config in ("dense", "e8", "e2"):
        for size in ("d64", "d32"):
            assert {r.seed for r in runs if r.key == f"{size}-{config}"} == {0, 1, 2}
    assert {r.control for r in runs} == {None, "form_matched", "gated_experts", "dense_total"}
    sizes = {r.key: model_size(claims.run_config(scale, r)) for r in runs if r.seed == 0}
    for key, size in sizes.items():
        steps = claims.size_of(scale, key.split("-")[0]).steps
        per_param = steps * scale.tokens_per_step * scale.fill / (size.params_activated - size.params_embedding)
        if key != "d64-dense-total":
            assert per_param >= 20, key
            dense = sizes[key.split("-")[0] + "-dense"].params_activated  # equal up to the router (E·M)
            assert abs(size.params_activated / dense - 1) < 0.025, key
    assert sizes["d64-dense-total"].params_total == sizes["d64-e8"].params_total  # 821,312: width 812
    assert sizes["d64-e8-geglu"].params_experts == sizes["d64-e8"].params_experts * 3 * 171 // (2 * 256)


def _fake_run(claims, out: Path, spec, scale, final: float, rows_shift: float) -> None:
    """A finished run folder: config.yaml, metrics.jsonl (a resumed tail logged twice), summary.json,
    heldout_rows.json with two sources whose per-row losses average to ``final``."""
    run_dir = out / spec.name
    run_dir.mkdir(parents=True)
    cfg = claims.run_config(scale, spec)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    steps = claims.size_of(scale, spec.size).steps
    records = []
    for step in range(0, steps + 1, 2):
        loss = final + (steps - step) * 0.5
        records.append({"kind": "eval", "step": step, "heldout/a": loss, "heldout/b": loss, "heldout/mean": loss})
        if step:
            train = {"kind": "train", "step": step, "loss": loss, "ce_loss": loss, "tokens_per_sec": 100.0 * step}
            train["target_tokens"] = 100.0  # per 2-step window
            if spec.experts:
                train.update({"moe/dropped_first/0": 0.1, "moe/dropped_second/0": 0.3})
                train.update({"moe/load_max_over_mean/0": 1.5, "moe/gate_entropy/0": 1.0})
            records.append(train)
    records.append(records[-1])
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = [[final + rows_shift * (i - 1.5), 1.0] for i in range(4)]  # four rows of one token, mean = final
    (run_dir / "heldout_rows.json").write_text(json.dumps({"a": rows, "b": rows}))
    summary = {"step": steps, "start_step": 0, "heldout": {}, "compile_seconds": 1.0, "skipped_steps": 0}
    (run_dir / "summary.json").write_text(json.dumps({**summary, "wall_seconds": 9.0, "threads": 1}))


def test_report_verdicts_from_hand_numbers(claims, tmp_path):
    scale = claims.SCALES["smoke"]
    finals = {"d16-dense-s0": 4.00, "d16-dense-s1": 4.02, "d16-e8-s0": 3.90}  # dense spread 0.02
    out = tmp_path / "out"
    for spec in claims.plan_runs(scale):
        _fake_run(claims, out, spec, scale, finals[spec.name], rows_shift=0.1)
    write_report = claims_report.write_report

    result = write_report(str(out), scale, claims.plan_runs(scale), str(tmp_path / "plots"), str(tmp_path / "none"))
    v = result["verdict"]["claim1_e8_vs_dense"]
    # gap = mean(dense) - e8 = 4.01 - 3.90; e8 has one seed, so it borrows dense's spread: threshold 2 x 0.02
    assert v["gap_a_minus_b"] == pytest.approx(0.11) and v["threshold"] == pytest.approx(0.04)
    assert v["spread_borrowed"] and v["counts"] and v["finding"] == "e8 lower by 0.1100"
    # the same rows, shifted by a constant per model: the paired bootstrap sees no noise in the gap
    assert v["eval_se_of_gap"] == pytest.approx(0.0, abs=1e-12)
    runs = {r["name"]: r for r in result["runs"]}
    e8 = runs["d16-e8-s0"]
    assert e8["final_heldout_mean"] == pytest.approx(3.90) and e8["heldout_mean_from_rows"] == pytest.approx(3.90)
    assert (
        e8["dropped_second_mean"] == pytest.approx(0.3)
        and e8["train_tokens"] == 200
        and e8["train_slots"] == 4 * 8 * 16
    )
    assert e8["curve"] == [[0, pytest.approx(5.90)], [100, pytest.approx(4.90)], [200, pytest.approx(3.90)]]
    assert e8["control"] is None
    assert e8["activated_nonembedding_params"] == e8["activated_params"] - e8["embedding_params"]
    # rows 3.75, 3.85, 3.95, 4.05 (sd 0.1118) in each of two sources resampled apart: 0.1118 / sqrt(4) / sqrt(2)
    se = result["noise"]["eval_se_of_one_mean"]["d16-e8"]
    assert se == pytest.approx(0.1118 / 2 / 2**0.5, rel=0.05)
    report = (out / "report.md").read_text()
    assert "| d16-dense (dense (gated twin)) | 2 | **4.0100** (4.0000, 4.0200) | 0.0200 |" in report
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {
        "heldout_vs_tokens.png",
        "heldout_vs_flops.png",
        "loss_vs_experts.png",
        "drops_vs_experts.png",
    }


def test_claims_are_taken_once_and_a_dead_owner_is_replaced(claims, tmp_path):
    run_dir = str(tmp_path / "run")
    assert claims.claim(run_dir) and not claims.claim(run_dir)  # our own live pid holds it
    (tmp_path / "run" / ".claim").write_text("999999999")  # a pid that cannot be alive
    assert claims.claim(run_dir)
    claims.release(run_dir)
    assert not (tmp_path / "run" / ".claim").exists()


# ~25 s on a quiet 2-core CPU, mostly compiling the training step
def test_smoke_sweep_trains_scores_rows_and_reuses(claims, shared_data, tmp_path):
    out, plots = tmp_path / "claims", tmp_path / "plots"
    argv = ["--scale", "smoke", "--out", str(out), "--plots", str(plots), "--data-root", str(shared_data)]
    argv += ["--only", "d16-dense-s0"]
    assert claims.main(argv) == 0
    result = json.loads((out / "claims.json").read_text())
    run = next(r for r in result["runs"] if r["name"] == "d16-dense-s0")
    assert run["finished"] and set(run["final_heldout"]) >= {"mean", "web", "books", "news"}
    assert run["heldout_mean_from_rows"] == pytest.approx(run["final_heldout_mean"], abs=1e-5)
    epochs = {name: s["epochs"] for name, s in result["data"]["d16"].items()}
    assert set(epochs) >= {"web", "conversations.nps_chat"} and all(np.isfinite(list(epochs.values())))
    metrics = (out / "d16-dense-s0" / "metrics.jsonl").read_text()
    assert claims.main(argv) == 0
    assert (out / "d16-dense-s0" / "metrics.jsonl").read_text() == metrics  # the finished run was reused
    assert len(json.loads((out / "sweep.json").read_text())["invocations"]) == 2
    # baseline_check replays the run's start: its step-0 held-out loss is the one the run logged
    import baseline_check

    step0 = next(json.loads(line) for line in metrics.splitlines() if '"eval"' in line and '"step": 0,' in line)
    repo, tokenizer = Path(__file__).resolve().parents[1], str(out / "tokenizer.model")
    s0, s1 = (
        baseline_check.fingerprint(str(repo), f"d16-dense-s{k}", str(shared_data), tokenizer, "smoke") for k in (0, 1)
    )
    assert s0["step0_heldout"]["mean"] == pytest.approx(step0["heldout/mean"], abs=1e-5)
    assert s0["heldout_batches"] == s1["heldout_batches"] and s0["first_train_batch"] == s1["first_train_batch"]
    assert s0["initial_params"] != s1["initial_params"]  # another seed, another initialisation


def test_routing_sweep_compares_at_equal_compute(claims):
    from glam.config import apply_overrides

    routing = routing_sweep
    scale = claims.SCALES["powered"]
    size = scale.sizes[-1]
    runs = routing.plan(scale, size)
    assert len(runs) == len({r.name for r in runs}) == 10 * 3 and [r.config for r in runs[:3]] == ["dense-src"] * 3
    cfg = {r.config: routing.run_config(scale, size, r) for r in runs if r.seed == 0 and not r.source}
    flops = {c: model_size(v).flops_per_token_train for c, v in cfg.items()}
    for config in routing.ROUTERS:  # equal activated compute, up to the router's E·M
        assert abs(flops[config] / flops["top2"] - 1) < 0.002, config
    assert cfg["top1"].moe.top_k == 1 and cfg["top1"].moe.expert_dim == 256 and cfg["top2-shared"].moe.expert_dim == 85
    steps = {r.config: r.steps for r in runs}
    upcycled = apply_overrides(cfg["dense-src"], ["moe.num_experts=8", "model.expert_activation=geglu"])
    assert model_size(upcycled).flops_per_token_train == flops["scratch"]  # upcycling makes the scratch model
    budget = steps["scratch"] * flops["scratch"]
    assert steps["dense-src"] == 400 and steps["upcycled"] == 858 and steps["dense-cont"] == 935
    spent = steps["dense-src"] * flops["dense-src"] + (steps["upcycled"] - steps["dense-src"]) * flops["scratch"]
    assert abs(spent / budget - 1) < 0.002 and abs(steps["dense-cont"] * flops["dense-cont"] / budget - 1) < 0.002


def test_today_sweep_holds_activated_and_total_parameters(claims):
    """experiments/glam_today.py (issue 26): 8 configurations x 3 seeds at d64, seed 0 of all first; the
    granular experts hold E=8's activated and total expert parameters and its 32 slots per expert and
    group; every-layer MoE holds the activated count exactly (total 6% lower, see its doc)."""
    import glam_today

    from glam.model.moe.gating import capacity

    scale = claims.SCALES["powered"]
    runs = glam_today.plan(scale)
    assert len(runs) == len({r.name for r in runs}) == 8 * 3
    assert [r.config for r in runs[:8]] == list(glam_today.CONFIGS) and {r.seed for r in runs[:8]} == {0}
    cfg = {r.config: glam_today.run_config(scale, r) for r in runs if r.seed == 0}
    size = {c: model_size(v) for c, v in cfg.items()}
    e8 = size["e8"]
    for g in (2, 4, 8):
        m = cfg[f"g{g}"].moe
        assert (m.num_experts, m.top_k, m.expert_dim) == (8 * g, 2 * g, 256 // g)
        assert capacity(128, m.num_experts, m.capacity_factor_train, m.capacity_multiple) == 32
        router = 2 * 64 * 8 * (g - 1)  # 2 MoE layers, M = 64, 8(g - 1) more experts to score
        assert size[f"g{g}"].params_total - e8.params_total == router
        assert size[f"g{g}"].params_activated - e8.params_activated == router
    assert cfg["every"].moe.layers == "all" and cfg["every"].moe.expert_dim == 224
    # activated per pair: 3·64·256 (dense) + 2·2·64·256 (two experts) = 2 MoE layers × 2·2·64·224
    assert size["every"].params_activated - e8.params_activated == 4 * 64 * 5 - 2 * 64 * 8  # routers only
    assert (
        e8.params_total - size["every"].params_total
        == 2 * (8 * 2 * 64 * 256 + 3 * 64 * 256 - 2 * 5 * 2 * 64 * 224) - 256
    )
    assert (cfg["bias"].moe.balance, cfg["bias"].moe.aux_loss_weight) == ("bias", 0.0)
    assert cfg["global"].moe.balance == "global_batch"


def test_today_what_to_change_follows_the_rule():
    """The "what to change" row names the largest counted gain over GLaM, or "nothing"."""
    import glam_today

    def v(b, gap, counts):
        return {"b": b, "gap_a_minus_b": gap, "threshold": 0.02, "counts": counts, "seeds_a": 3, "seeds_b": 3}

    verdict = {
        "granularity_2": v("g2", 0.03, True),
        "granularity_4": v("g4", 0.05, True),
        "granularity_8": v("g8", 0.04, True),
        "every_layer": v("every", 0.01, False),
        "bias_balance": v("bias", -0.03, True),  # counted, but worse than GLaM
    }
    rows = {r["question"]: r for r in glam_today.recommendations(verdict)}
    assert (rows["expert granularity"]["compared"], rows["expert granularity"]["gain"]) == ("g4", 0.05)
    assert rows["MoE in every layer"]["change"] == "nothing" and rows["load balancing"]["change"] == "nothing"


def test_a_signal_stops_the_worker_without_recording_the_run(claims, tmp_path, monkeypatch):
    """A SIGTERM'd run (checkpoint saved, train returns early) ends the worker: no summary.json, no held-out
    rows, the claim released, and the next run is not started (it once was, with a summary of step 920)."""
    from types import SimpleNamespace

    import glam.train.loop

    started = []

    def train(cfg, run_dir):
        started.append(cfg.name)
        return {"step": 920, "interrupted": "SIGTERM"}

    monkeypatch.setattr(glam.train.loop, "train", train)
    configs = {n: SimpleNamespace(name=n, train=SimpleNamespace(steps=3200)) for n in ("a", "b")}
    with pytest.raises(SystemExit):
        claims.train_all(str(tmp_path), ["a", "b"], configs)
    assert started == ["a"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == []  # no summary, rows or claim


def test_sweep_flags_and_out_folder_are_shared(tmp_path):
    import sweep_common

    given = tmp_path / "given.model"
    given.write_bytes(b"first")
    parser = sweep_common.sweep_parser("a sweep", "runs/x", {"powered": None, "smoke": None})
    args = parser.parse_args(["--out", str(tmp_path / "out"), "--tokenizer", str(given), "--only", "a,b"])
    assert (args.scale, args.worker, args.workers, args.report_only, args.only) == ("powered", -1, 1, False, "a,b")
    path = Path(sweep_common.prepare_out(args))
    assert path == tmp_path / "out" / "tokenizer.model" and path.read_bytes() == b"first"
    given.write_bytes(b"second")
    assert Path(sweep_common.prepare_out(args)).read_bytes() == b"first"  # a sweep keeps the tokenizer it began with
    no_tokenizer = sweep_common.sweep_parser("c", "runs/c", {"powered": None}, tokenizer=False)
    assert "--tokenizer" not in no_tokenizer.format_help()
    args.out, args.tokenizer = str(tmp_path / "fresh"), str(tmp_path / "missing.model")
    with pytest.raises(SystemExit, match="missing.model: no such file"):
        sweep_common.prepare_out(args)
