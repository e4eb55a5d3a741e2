"""`glam info` and `glam plan`: JSON contents, one-line errors, the 64B/64E plan (small ones: test_plan_programs)."""

import json
import os
import subprocess
import sys

import pytest

from glam.cli.main import main


def test_info_json_has_the_documented_keys(capsys):
    assert main(["info", "glam-64b-64e", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    for key in (
        "params_total",
        "params_activated",
        "vocab_size",
        "num_layers",
        "d_model",
        "ffn_dim",
        "num_heads",
        "head_dim",
        "num_experts",
        "flops_per_token_train",
        "flops_per_token_inference",
    ):
        assert key in d
    assert d["params_activated"] == 96_604_528_640 and d["num_experts"] == 64
    assert d["paper_params_total"] == 1.2e12
    # 6N + 12·L·A·S with N = 96.6B, L = 64, A = 16384, S = 1024
    assert d["flops_per_token_train"] == 6 * 96_604_528_640 + 12 * 64 * 16384 * 1024


def test_info_dense_has_zero_experts(capsys):
    assert main(["info", "dense-8b", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["num_experts"] == 0 and d["params_total"] == d["params_activated"]


def test_info_layout_names_the_layers_of_each_kind(capsys):
    for layers, moe, dense in ((4, "0, 2", "1, 3"), (12, "0, 2, ..., 10", "1, 3, ..., 11")):
        assert main(["info", "tiny", f"model.num_layers={layers}", "--json"]) == 0
        d = json.loads(capsys.readouterr().out)
        assert [(x["layers"], x["count"]) for x in d["layout"]] == [(moe, layers // 2), (dense, layers // 2)]
    assert main(["info", "dense-8b", "--json"]) == 0
    (only,) = json.loads(capsys.readouterr().out)["layout"]
    assert only == {"layers": "0, 1, ..., 31", "count": 32, "ffn": "dense gated-GELU"}


@pytest.mark.parametrize(
    "argv,message",
    [
        (["info", "glam-9000b"], "unknown preset 'glam-9000b'"),
        (["info", "tiny", "model.d_modle=3"], "model.d_modle: unknown key"),
        (["info", "tiny", "train.steps=many"], "train.steps: expected an integer"),
        (["info", "tiny", "moe.num_experts=1"], "moe.num_experts: a MoE layer needs at least 2 experts"),
        (["plan", "tiny", "--mesh", "4by2"], "write it as DATAxMODEL"),
        (["plan", "tiny", "--mesh", "3x1"], "not divisible by mesh.data=3"),
        (["plan", "tiny", "--mesh", "4x2", "--hardware", "tpu-v9"], "no such profile or file; use one of a100-80g"),
    ],
)
def test_user_mistakes_are_one_line_errors(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.slow
def test_plan_glam_64b_64e_on_1024_simulated_devices():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "glam.cli.main",
            "plan",
            "glam-64b-64e",
            "--mesh",
            "64x16",
            "--hardware",
            "tpu-v4",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=True,
    )
    p = json.loads(out.stdout)
    assert p["devices"] == 1024
    # 1.16T fp32 parameters over 1024 chips alone are 4.5 GB per chip; with Adafactor's factored
    # state and remat the whole step must fit a 32 GiB TPU v4.
    assert 4.5e9 < p["argument_bytes"] < 9e9
    assert p["total_gib_per_device"] < 32 and p["estimate"]["fits_hbm"]
    # every MoE layer exchanges tokens with all-to-alls, inside the layer scan (L/2 = 32 runs per exchange)
    assert p["comms"]["by_category"]["moe_dispatch_combine"]["count"] % 32 == 0
    assert p["comms"]["by_category"]["moe_dispatch_combine"]["count"] > 0
    assert 0 < p["estimate"]["mfu"] < 1 and p["estimate"]["step_seconds"] > 0


def test_info_names_train_seq_len_and_shows_model_max_seq_len(capsys):
    assert main(["info", "tiny", "train.seq_len=64", "model.max_seq_len=256", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["train.seq_len"], d["model.max_seq_len"]) == (64, 256) and "seq_len" not in d
    assert main(["info", "tiny", "train.seq_len=64", "model.max_seq_len=256"]) == 0
    out = capsys.readouterr().out
    assert "S = train.seq_len = 64" in out and "model.max_seq_len = 256" in out


PROFILE = """name: mine
peak_flops: 275.0e12
hbm_bytes: 34359738368
hbm_bandwidth: 1.2e12
link_bandwidth: 45.0e9
links_per_collective: 2
"""


@pytest.mark.parametrize(
    "change, message",
    [
        ("peak_flops: 1.0e12\n", "is not valid YAML (key 'peak_flops' is given twice (lines 2 and 7): merge them, "
         "the second would replace the first); fix it"),
        ("hbm_bandwidth: .nan\n", "hbm_bandwidth=nan is not a finite number; write the figure, e.g. 275.0e12"),
        ("hbm_bandwidth: .inf\n", "hbm_bandwidth=inf is not a finite number; write the figure, e.g. 275.0e12"),
        ("hbm_bandwidth: fast\n", "hbm_bandwidth='fast' is not a number; write it as e.g. 275.0e12"),
        ("hbm_bandwidth: 'nan'\n", "hbm_bandwidth='nan' is not a number; write it as e.g. 275.0e12"),
        ("links_per_collective: true\n", "links_per_collective=True is not a number; write it as e.g. 275.0e12"),
        ("devices_per_node: 8.5\ninter_node_bandwidth: 5.0e9\n",
         "devices_per_node=8.5 must be a whole number of devices (0: all)"),
    ],
)  # fmt: skip
def test_a_hardware_profile_is_strict(capsys, tmp_path, change, message):
    """Issue 28: a key given twice took the last, .nan/.inf/strings gave `MFU 100.1%` and `nan µs`, true was 1."""
    path = tmp_path / "mine.yaml"
    text = PROFILE.replace("hbm_bandwidth: 1.2e12\n", "") if change.startswith("hbm_bandwidth") else PROFILE
    text = text.replace("links_per_collective: 2\n", "") if change.startswith("links_per") else text
    path.write_text(text + change)
    assert main(["plan", "tiny", "--mesh", "1x1", "--hardware", str(path)]) == 2
    err = capsys.readouterr().err
    where = f"--hardware profile {str(path)!r} " if "YAML" in message else f"{path}: "
    assert err == f"error: {where}{message}\n"


def test_a_hardware_profile_takes_an_exponent_without_a_dot(tmp_path):
    """YAML 1.1 reads 275e12 as a string; that one spelling of a number is taken (the old advice used it)."""
    from glam.plan.hardware import load

    path = tmp_path / "mine.yaml"
    path.write_text(PROFILE.replace("275.0e12", "275e12"))
    assert load(str(path)).peak_flops == 275.0e12


def test_plan_batch_zero_is_refused_and_json_is_strict(capsys, monkeypatch):
    assert main(["plan", "tiny", "--mesh", "1x1", "--batch", "0"]) == 2
    assert capsys.readouterr().err == "error: argument --batch: got 0; give an integer >= 1 (see `glam plan --help`)\n"
    import glam.cli.plan as plan_cli

    monkeypatch.setattr(plan_cli, "ensure_cpu_devices", lambda n: None)
    monkeypatch.setattr(
        plan_cli, "plan", lambda cfg, data, model, hw: {"batch": cfg.train.batch_size, "mfu": float("nan")}
    )
    assert main(["plan", "tiny", "--mesh", "1x1", "--batch", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"batch": 3, "mfu": None}  # strict JSON: never a bare NaN
