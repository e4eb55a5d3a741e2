"""The lm-evaluation-harness adapter gives the same accuracy as glam.evals on the same local task.

lm-eval is an optional extra (``pip install 'glam[lm-eval]'``, ~80 packages incl. pandas, pyarrow,
scikit-learn); without it this module is skipped. Commands to run it: docs/tasks.md.
"""

import json
from pathlib import Path

import pytest

lm_eval = pytest.importorskip(
    "lm_eval", reason="lm-eval is not installed (optional extra: pip install 'glam[lm-eval]')"
)

from glam.evals import evaluate  # noqa: E402
from glam.evals.lm_eval_adapter import GLaMLM  # noqa: E402
from glam.evals.testing import CharLanguageModel  # noqa: E402

SHARED_TASKS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tasks"

COPA_LM_EVAL = """task: glam_local_copa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{premise[:-1] if premise.endswith('.') else premise}}}}
  {{{{'because' if question == 'cause' else 'therefore'}}}}"
doc_to_choice: "{{{{[choice1[0].lower() + choice1[1:], choice2[0].lower() + choice2[1:]]}}}}"
doc_to_target: label
metric_list:
  - metric: acc
"""

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
"""


def _copa_rows():
    if (SHARED_TASKS / "copa/val.jsonl").exists():
        return (SHARED_TASKS / "copa/val.jsonl").read_text().splitlines()[:40]
    rows = [
        {"premise": "The man turned on the faucet.", "choice1": "The toilet filled with water.",
         "choice2": "Water flowed from the spout.", "question": "effect", "label": 1, "idx": 0},
        {"premise": "The girl found a bug in her cereal.", "choice1": "She poured milk in the bowl.",
         "choice2": "She lost her appetite.", "question": "effect", "label": 1, "idx": 1},
        {"premise": "The woman retired.", "choice1": "She received her pension.",
         "choice2": "She paid off her mortgage.", "question": "effect", "label": 0, "idx": 2},
    ]  # fmt: skip
    return [json.dumps(r) for r in rows]


def _run_lm_eval(tmp_path, monkeypatch, template, data_file, name):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    task_dir = tmp_path / "lm_eval_tasks"
    task_dir.mkdir(exist_ok=True)
    (task_dir / f"{name}.yaml").write_text(template.format(data=data_file))
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(
        model=GLaMLM(model=CharLanguageModel()),
        tasks=[name],
        task_manager=TaskManager(include_path=str(task_dir)),
        num_fewshot=0,
        bootstrap_iters=0,
        log_samples=False,
    )
    return out["results"][name]["acc,none"]


@pytest.mark.slow
def test_copa_parity(tmp_path, monkeypatch):
    data = tmp_path / "data" / "copa" / "val.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text("\n".join(_copa_rows()) + "\n")
    ours = evaluate(CharLanguageModel(), "copa", data_root=tmp_path / "data")["tasks"]["copa"]["value"]
    theirs = _run_lm_eval(tmp_path, monkeypatch, COPA_LM_EVAL, data, "glam_local_copa")
    assert theirs == pytest.approx(ours)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_TASKS / "arc_easy").is_dir(), reason=f"no ARC-Easy data at {SHARED_TASKS}")
def test_arc_easy_parity_unnormalised(tmp_path, monkeypatch):
    data = tmp_path / "data" / "arc_easy" / "llmfoundry_arc_easy.jsonl"
    data.parent.mkdir(parents=True)
    lines = (SHARED_TASKS / "arc_easy/llmfoundry_arc_easy.jsonl").read_text().splitlines()[:60]
    data.write_text("\n".join(lines) + "\n")
    row = evaluate(CharLanguageModel(), "arc_easy", data_root=tmp_path / "data")["tasks"]["arc_easy"]
    # lm-eval's "acc" is unnormalised (its acc_norm divides by characters excluding the delimiter).
    theirs = _run_lm_eval(tmp_path, monkeypatch, ARC_LM_EVAL, data, "glam_local_arc_easy")
    assert theirs == pytest.approx(row["extra"]["acc_none"])


def test_adapter_generate_until_and_rolling():
    from lm_eval.api.instance import Instance

    lm = GLaMLM(model="glam.evals.testing:CharLanguageModel", beam_size="4")
    reqs = [Instance("generate_until", {}, ("xyzz", {"until": ["zz"], "max_gen_toks": 5}), 0)]
    assert lm.generate_until(reqs) == [""] and lm.beam_size == 4
    reqs = [Instance("generate_until", {}, ("xyzz", {"until": "\n", "max_gen_toks": 3}), 0)]
    assert lm.generate_until(reqs) == ["zzz"]
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("ab",), 0)])
    assert rolling == [pytest.approx(CharLanguageModel().loglikelihood_rolling(["ab"])[0][0])]
    with pytest.raises(ValueError, match="checkpoint=RUN_DIR"):
        GLaMLM()
