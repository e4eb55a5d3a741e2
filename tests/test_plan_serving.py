"""glam.plan.serving: the decode-step estimate, against values worked by hand (and the CLI that prints it)."""

import json

import pytest

from glam.cli.main import main
from glam.config import resolve
from glam.plan.hardware import Hardware
from glam.plan.serving import (
    Counts,
    busiest_chip_experts,
    counts,
    decode_step,
    dense_twin,
    expected_max_binomial,
    expected_touched,
)

# a made-up chip: 10,000 FLOP/s and 1,000 bytes/s, so the seconds below are easy to check
HW = Hardware("toy", 1e4, 1e6, 1e3, 1.0, 1.0, 0, 0.0, "", ())
TOY = Counts("toy", dense_params=1000, expert_params=100, moe_layers=2, experts=4, top_k=2, activated_params=1400,
             layers=4, attention_dim=8)  # fmt: skip


def test_expected_touched_by_hand():
    assert expected_touched(8, 2, 8) == pytest.approx(8 * (1 - 0.75**8))  # 7.1991: docs/benchmarks.md §5's 7.2
    assert expected_touched(8, 2, 8) == pytest.approx(7.19909668)
    assert expected_touched(64, 2, 1) == pytest.approx(2.0)  # one token touches exactly its two experts
    assert expected_touched(0, 2, 8) == 0.0


def test_expected_max_of_binomials_by_hand():
    assert expected_max_binomial(1, 0.25, 8) == pytest.approx(1 - 0.75**8)  # P(any of 8 coins)
    assert expected_max_binomial(2, 0.5, 1) == pytest.approx(1.0)  # one copy: the mean n·p
    # X in {0, 1, 2} w.p. 1/4, 1/2, 1/4; max of two: P(≥1) = 1 − 1/16, P(≥2) = 1 − 9/16
    assert expected_max_binomial(2, 0.5, 2) == pytest.approx(1.375)


def test_busiest_chip_experts_by_hand():
    assert busiest_chip_experts(8, 2, 8, data=1) == pytest.approx(expected_touched(8, 2, 8))  # one chip: the mean
    # E = 4 over 8 data shards: each chip holds half an expert; p = 1/2 at B = 1; any of 4 touched: 15/16
    assert busiest_chip_experts(4, 2, 1, data=8) == pytest.approx(0.46875)
    # E = 4 over 2 shards: two experts each, p = 3/4 at B = 2; max of two Binomial(2, 3/4)
    assert busiest_chip_experts(4, 2, 2, data=2) == pytest.approx(1.8046875)


def test_decode_step_one_chip_by_hand():
    r = decode_step(TOY, HW, batch=2, context=10)
    assert r["experts_touched_per_moe_layer"] == pytest.approx(3.0)  # 4·(1 − 0.5²)
    read = r["bytes_read_per_chip"]
    assert read["dense_weights"] == 2000  # 1000 params · 2 bytes
    assert read["experts"] == pytest.approx(1200)  # 2 layers · 3 experts · 100 params · 2 bytes
    assert read["kv_cache"] == 2560  # K and V: 2 · 4 layers · 2 rows · 10 tokens · 8 · 2 bytes
    assert read["total"] == pytest.approx(5760)
    assert r["flops_per_chip"] == 8160  # 2 rows · (2·1400 + 4·4·8·10)
    assert r["compute_seconds"] == pytest.approx(0.816) and r["memory_seconds"] == pytest.approx(5.76)
    assert r["bound"] == "memory" and r["step_seconds"] == pytest.approx(5.76)
    assert r["tokens_per_second_per_chip"] == pytest.approx(2 / 5.76)


def test_decode_step_on_a_mesh_by_hand():
    r = decode_step(TOY, HW, batch=2, context=10, data=2, model=2)
    read = r["bytes_read_per_chip"]
    assert read["dense_weights"] == 500 and read["kv_cache"] == 640  # both over all 4 chips
    assert read["experts"] == pytest.approx(2 * 1.8046875 * 100 * 2 / 2)  # busiest chip, F over model
    assert r["flops_per_chip"] == 2040
    assert r["tokens_per_second_per_chip"] == pytest.approx(2 / r["step_seconds"] / 4)
    assert r["bytes_held_per_chip"] == pytest.approx((1000 + 2 * 4 * 100) * 2 / 4 + 640)


def test_counts_and_dense_twin_of_tiny():
    c = counts(resolve("tiny", []))
    assert c.expert_params == 2 * 128 * 768  # one non-gated ReLU expert
    assert c.dense_params == 4_525_696 - 16 * c.expert_params and c.moe_layers == 2 and c.top_k == 2
    twin = dense_twin(resolve("tiny", []))
    assert twin.model.ffn_dim == resolve("tiny-dense", []).model.ffn_dim == 896  # 7F/6
    assert counts(twin).activated_params == counts(resolve("tiny-dense", [])).activated_params


def test_glam_plan_decode_batch_json(capsys):
    assert main(["plan", "tiny", "--mesh", "1x1", "--decode-batch", "1", "8", "--hardware", "h100-sxm", "--json"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert [r["batch"] for r in e["rows"]] == [1, 8, 1, 8]  # tiny, then its dense twin
    assert e["rows"][1]["experts_touched_per_moe_layer"] == pytest.approx(7.19909668)
    assert e["rows"][1]["tokens_per_second_over_twin"] == pytest.approx(
        e["rows"][1]["tokens_per_second"] / e["rows"][3]["tokens_per_second"]
    )


def test_glam_plan_64b_serving_is_beside_the_paper(capsys):
    assert main(["plan", "glam-64b-64e", "--mesh", "64x16", "--decode-batch", "8", "--json"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert e["paper_inference_gflops_per_token"] == {"glam-64b-64e": 180.0, "gpt-3": 350.0}
    # 2·96.6B + 4·64·16384·1024 (context 1024)
    assert e["inference_flops_per_token"]["glam-64b-64e"] == 2 * 96_604_528_640 + 4 * 64 * 16384 * 1024
    assert e["rows"][0]["experts_touched_per_moe_layer"] == pytest.approx(64 * (1 - (62 / 64) ** 8))
