"""The lm-evaluation-harness adapter against the real lm-eval (in the dev extra): same accuracy as glam.evals
on the same local task, from lm-eval's own command line too; its arguments, generation kwargs and errors.

Skipped only where lm-eval is not installed (``pip install 'glam[lm-eval]'``). Commands: docs/tasks.md.
"""

import importlib.metadata as md
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

lm_eval = pytest.importorskip(
    "lm_eval", reason="lm-eval is not installed (optional extra: pip install 'glam[lm-eval]')"
)

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.api.registry import Registry, get_model  # noqa: E402
from lm_eval_tasks import COPA_LM_EVAL, copa_rows  # noqa: E402

import glam.inference  # noqa: E402
from glam.errors import ConfigError, GLaMWarning  # noqa: E402
from glam.evals import evaluate  # noqa: E402
from glam.evals.lm_eval_adapter import GLaMLM  # noqa: E402
from glam.evals.testing import CharLanguageModel  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_TASKS = REPO / ".." / "shared" / "data" / "tasks"
CHAR_MODEL = "model=glam.evals.testing:CharLanguageModel"

ARC_LM_EVAL = """task: glam_local_arc_easy
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query.strip()}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
metric_list:
  - metric: acc
  - metric: acc_norm
"""

GEN_LM_EVAL = """task: glam_local_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{premise}}}}"
doc_to_target: "{{{{choice1}}}}"
generation_kwargs: {{until: ["\\n"], max_gen_toks: 300}}
metric_list:
  - metric: exact_match
"""

SHORT_CONTEXT_MODEL = """from glam.evals.testing import CharLanguageModel


class ShortContext(CharLanguageModel):
    max_length = 256  # the tiny preset's model.max_seq_len
"""


def _copa_data(tmp_path) -> Path:
    data = tmp_path / "data" / "copa" / "val.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text("\n".join(copa_rows(SHARED_TASKS, 40)) + "\n")
    return data


def _task_dir(tmp_path, template, data_file, name) -> Path:
    task_dir = tmp_path / "lm_eval_tasks"
    task_dir.mkdir(exist_ok=True)
    (task_dir / f"{name}.yaml").write_text(template.format(data=data_file, name=name))
    return task_dir


def _offline_env(tmp_path, *pythonpath) -> dict:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *map(str, pythonpath), env.get("PYTHONPATH", "")])
    return env


def _cli(tmp_path, command, model_args, task_dir, task, *pythonpath) -> subprocess.CompletedProcess:
    args = ["run", "--model", "glam", "--model_args", model_args, "--include_path", str(task_dir), "--tasks", task]
    args += ["--output_path", str(tmp_path / "out")]
    env = _offline_env(tmp_path, *pythonpath)
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def _cli_results(tmp_path, proc, task) -> dict:
    assert proc.returncode == 0, proc.stderr[-2000:]
    [results] = (tmp_path / "out").rglob("results_*.json")
    return json.loads(results.read_text())["results"][task]


def _run_lm_eval(tmp_path, monkeypatch, template, data_file, name):
    for key, value in _offline_env(tmp_path).items():
        if key.startswith("HF_"):
            monkeypatch.setenv(key, value)
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(
        model=GLaMLM(model=CharLanguageModel()),
        tasks=[name],
        task_manager=TaskManager(include_path=str(_task_dir(tmp_path, template, data_file, name))),
        num_fewshot=0,
        bootstrap_iters=0,
        log_samples=False,
    )
    return out["results"][name]


@pytest.mark.slow
def test_fallback_command_line_copa_parity(tmp_path):
    """``python -m glam.evals.lm_eval_adapter run --model glam ...`` (lm-eval 0.4.13 has no plugin discovery)."""
    data = _copa_data(tmp_path)
    ours = evaluate(CharLanguageModel(), "copa", data_root=tmp_path / "data")["tasks"]["copa"]
    task_dir = _task_dir(tmp_path, COPA_LM_EVAL, data, "glam_local_copa")
    proc = _cli(tmp_path, [sys.executable, "-m", "glam.evals.lm_eval_adapter"], CHAR_MODEL, task_dir, "glam_local_copa")
    theirs = _cli_results(tmp_path, proc, "glam_local_copa")
    assert theirs["acc,none"] == pytest.approx(ours["extra"]["acc_none"]) == pytest.approx(ours["value"])
    assert theirs["acc_norm,none"] == pytest.approx(ours["extra"]["acc_norm"])


@pytest.mark.slow
def test_fallback_command_line_error_is_one_line(tmp_path):
    """A GLaMError deep in lm-eval's run (max_gen_toks over the model's window) is one line and status 2."""
    (tmp_path / "short_context.py").write_text(SHORT_CONTEXT_MODEL)
    task_dir = _task_dir(tmp_path, GEN_LM_EVAL, _copa_data(tmp_path), "glam_local_gen")
    command = [sys.executable, "-m", "glam.evals.lm_eval_adapter"]
    proc = _cli(tmp_path, command, "model=short_context:ShortContext", task_dir, "glam_local_gen", tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        "error: max_gen_toks=300 leaves no room for a context in the model's 256-token window; "
        "pass --gen_kwargs max_gen_toks=N with N < 256 (the context keeps its last 256 - N tokens)"
    )


@pytest.mark.slow
def test_a_model_arg_that_is_not_a_language_model_is_one_line(tmp_path):
    """Issue 28: ``model=builtins:dict`` gave a 42-line traceback from deep in lm-eval's run."""
    task_dir = _task_dir(tmp_path, COPA_LM_EVAL, _copa_data(tmp_path), "glam_local_copa")
    command = [sys.executable, "-m", "glam.evals.lm_eval_adapter"]
    proc = _cli(tmp_path, command, "model=builtins:dict", task_dir, "glam_local_copa")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1] == (
        "error: model_args model='builtins:dict': dict() gave a dict, which has no loglikelihood, "
        "loglikelihood_rolling, generate; name a glam LanguageModel (glam.evals.model_api), e.g. "
        "glam.evals.testing:CharLanguageModel"
    )


@pytest.mark.parametrize(
    "spec, message",
    [
        ("builtins:len", "calling len() failed (TypeError: len() takes exactly one argument (0 given)); it must "
         "build the model with no arguments"),
        ("glam.evals.lm_eval_adapter:GEN_KWARGS", "GEN_KWARGS is a tuple, not a class or factory"),
    ],
)  # fmt: skip
def test_model_arg_factories_that_fail_are_one_line(spec, message):
    with pytest.raises(ConfigError) as err:
        GLaMLM(model=spec)
    assert str(err.value) == f"model_args model={spec!r}: {message}"


def test_entry_point_names_the_adapter():
    """The ``lm_eval.models`` entry point (pyproject) is what plugin-discovering lm-eval registers as ``glam``."""
    entry = [ep for ep in md.entry_points(group="lm_eval.models") if ep.name == "glam"]
    if not entry:
        pytest.skip("glam is not installed (pip install -e .), so it declares no entry points")
    registry = Registry("model", base_cls=LM)
    registry.register("glam", target=entry[0])  # what lm_eval.api.registry.load_plugins does with each one
    assert registry.get("glam") is GLaMLM and get_model("glam") is GLaMLM


@pytest.mark.slow
@pytest.mark.skipif(
    not hasattr(lm_eval.api.registry, "load_plugins"), reason=f"lm-eval {md.version('lm_eval')}: no plugin discovery"
)
def test_lm_eval_command_finds_glam_by_its_entry_point(tmp_path):
    task_dir = _task_dir(tmp_path, COPA_LM_EVAL, _copa_data(tmp_path), "glam_local_copa")
    proc = _cli(tmp_path, [str(Path(sys.executable).parent / "lm_eval")], CHAR_MODEL, task_dir, "glam_local_copa")
    ours = evaluate(CharLanguageModel(), "copa", data_root=tmp_path / "data")["tasks"]["copa"]
    assert _cli_results(tmp_path, proc, "glam_local_copa")["acc,none"] == pytest.approx(ours["value"])


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_TASKS / "arc_easy").is_dir(), reason=f"no ARC-Easy data at {SHARED_TASKS}")
def test_arc_easy_parity_acc_and_acc_norm(tmp_path, monkeypatch):
    data = tmp_path / "data" / "arc_easy" / "llmfoundry_arc_easy.jsonl"
    data.parent.mkdir(parents=True)
    lines = (SHARED_TASKS / "arc_easy/llmfoundry_arc_easy.jsonl").read_text().splitlines()[:60]
    data.write_text("\n".join(lines) + "\n")
    row = evaluate(CharLanguageModel(), "arc_easy", data_root=tmp_path / "data")["tasks"]["arc_easy"]
    theirs = _run_lm_eval(tmp_path, monkeypatch, ARC_LM_EVAL, data, "glam_local_arc_easy")
    # lm-eval's acc is unnormalised; its acc_norm divides by the option's characters without the delimiter.
    assert theirs["acc,none"] == pytest.approx(row["extra"]["acc_none"])
    assert theirs["acc_norm,none"] == pytest.approx(row["extra"]["acc_norm"])
    assert row["extra"]["acc_norm"] != row["extra"]["acc_per_char"]  # the delimiter changes picks here


def test_model_args_unknown_rejected_lm_evals_own_accepted(monkeypatch):
    with pytest.raises(ConfigError) as err:
        GLaMLM.create_from_arg_string(f"{CHAR_MODEL},beam_sise=4")
    assert str(err.value) == (
        "model_args: unknown argument 'beam_sise' (did you mean beam_size?); accepted: batch_size, beam_size, "
        "checkpoint, device, max_batch_size, max_gen_toks, model, seed"
    )
    lm = GLaMLM.create_from_arg_string(f"{CHAR_MODEL},beam_size=2", {"batch_size": 1, "device": "cuda:0"})
    assert lm.beam_size == 2 and isinstance(lm.model, CharLanguageModel)
    with pytest.raises(ConfigError, match="beam_size=0: give a whole number >= 1"):
        GLaMLM(model=CharLanguageModel(), beam_size=0)
    with pytest.raises(ConfigError, match="checkpoint=RUN_DIR"):
        GLaMLM()

    loads = []

    class Loaded:
        batch_size = 32  # the checkpoint's eval.batch_size

    def load_language_model(run_dir, **kwargs):
        loads.append((run_dir, kwargs))
        model = Loaded()
        model.batch_size = kwargs["batch_size"] or Loaded.batch_size
        return model

    monkeypatch.setattr(glam.inference, "load_language_model", load_language_model)
    assert GLaMLM(checkpoint="runs/x", batch_size="8").model.batch_size == 8  # lm-eval's --batch_size 8
    assert GLaMLM(checkpoint="runs/x", batch_size="auto", max_batch_size=4).model.batch_size == 4
    assert GLaMLM(checkpoint="runs/x", batch_size="auto:2").model.batch_size == 32
    assert loads == [("runs/x", {"batch_size": 8}), ("runs/x", {"batch_size": None}), ("runs/x", {"batch_size": None})]
    with pytest.raises(ConfigError, match="max_gen_toks='many': give a whole number >= 1"):
        GLaMLM(checkpoint="runs/x", max_gen_toks="many")
    assert len(loads) == 3  # a bad argument is refused before the checkpoint loads


def _generate(lm, context, **kwargs):
    return lm.generate_until([Instance("generate_until", {}, (context, kwargs), 0)])[0]


def test_adapter_generate_until_and_rolling():
    lm = GLaMLM(model="glam.evals.testing:CharLanguageModel", beam_size="4")
    assert _generate(lm, "xyzz", until=["zz"], max_gen_toks=5) == "" and lm.beam_size == 4
    assert _generate(lm, "xyzz", until="\n", max_gen_toks=3) == "zzz"
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("ab",), 0)])
    assert rolling == [pytest.approx(CharLanguageModel().loglikelihood_rolling(["ab"])[0][0])]


def test_generate_until_honours_do_sample_temperature_top_p():
    lm, char = GLaMLM(model=CharLanguageModel()), CharLanguageModel()
    # lm-eval's rule: no do_sample, no sampling, whatever the temperature says (and a warning says so).
    with pytest.warns(GLaMWarning, match="temperature=0.8 without do_sample=true: decoding greedily"):
        assert _generate(lm, "xyzz", max_gen_toks=3, temperature=0.8) == "zzz"
    assert _generate(lm, "xyzz", max_gen_toks=3, do_sample=False, temperature=0.0) == "zzz"
    # After "xyzz" z is the unique most likely character: the top-1 sample is the greedy one.
    assert _generate(lm, "xyzz", max_gen_toks=3, do_sample=True, temperature=1.0, top_k=1) == "zzz"
    hot = _generate(lm, "xyzz", max_gen_toks=6, do_sample=True, temperature=50.0, top_p=0.9, seed=4)
    assert hot == char.generate(["xyzz"], max_tokens=6, stop=[], temperature=50.0, top_p=0.9, seed=4)[0] != "zzzzzz"
    assert (
        _generate(lm, "xyzz", max_gen_toks=6, do_sample=True)
        == char.generate(["xyzz"], max_tokens=6, stop=[], temperature=1.0, seed=0)[0]
    )  # do_sample without a temperature samples at 1.0, with model_args seed (0)
    with pytest.raises(ConfigError, match="do_sample=true with temperature=0.0: set temperature > 0"):
        _generate(lm, "xyzz", do_sample=True, temperature=0)
    with pytest.raises(ConfigError, match="generation kwarg 'num_beams' is not supported; glam accepts until"):
        _generate(lm, "xyzz", num_beams=2)
    with pytest.raises(ConfigError, match="model_args beam_size=4 asks for beam search"):
        _generate(GLaMLM(model=CharLanguageModel(), beam_size=4), "xyzz", do_sample=True)

    class GreedyOnly:  # a LanguageModel that predates the sampling keywords
        def generate(self, contexts, *, max_tokens, stop, beam_size):
            return ["" for _ in contexts]

    with pytest.raises(ConfigError, match="GreedyOnly.generate cannot sample"):
        _generate(GLaMLM(model=GreedyOnly()), "xyzz", do_sample=True)
    assert _generate(GLaMLM(model=GreedyOnly()), "xyzz", until="\n") == ""  # greedy still works


def test_max_gen_toks_over_the_context_is_refused():
    class ShortContext(CharLanguageModel):
        max_length = 256

    lm = GLaMLM(model=ShortContext())
    assert _generate(lm, "xyzz", max_gen_toks=255) == "z" * 255
    with pytest.raises(ConfigError, match=r"max_gen_toks=300 leaves no room .* 256-token window; pass --gen_kwargs"):
        _generate(lm, "xyzz", max_gen_toks=300)


def test_importing_the_adapter_keeps_lm_evals_own_models():
    """lm-eval loads its built-in models only into an empty registry: glam must not be registered first."""
    from lm_eval.api.registry import get_model

    import glam.evals.lm_eval_adapter  # noqa: F401

    assert get_model("glam").__name__ == "GLaMLM"
    assert get_model("local-completions").__name__ == "LocalCompletionsAPI"
