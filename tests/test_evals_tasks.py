"""Task files: every shipped YAML parses, every task with data loads, mistakes raise TaskError."""

import json
from pathlib import Path

import pytest
import yaml

from glam.evals import TaskDataError, TaskError, list_tasks, load_data, load_task
from glam.evals.tasks import has_data, load_task_file, parse_task

SHARED_TASKS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tasks"
needs_shared = pytest.mark.skipif(
    not SHARED_TASKS.is_dir(), reason=f"shared task data not found at {SHARED_TASKS} (only in developer/CI checkouts)"
)

PAPER_TASKS = {  # GLaM §7: 8 NLG + 21 NLU
    "triviaqa", "natural_questions", "webquestions", "lambada", "squad_v2", "drop", "quac", "coqa",
    "hellaswag", "storycloze", "winograd", "winogrande", "piqa", "arc_easy", "arc_challenge", "openbookqa",
    "boolq", "copa", "rte", "wic", "multirc", "wsc", "record", "cb", "anli_r1", "anli_r2", "anli_r3",
    "race_m", "race_h",
}  # fmt: skip

MINIMAL = {
    "name": "t",
    "category": "NLU",
    "group": "superglue",
    "output": "multiple_choice",
    "metric": "acc",
    "data": {"path": "t/val.jsonl"},
    "prompt": "{{q}}",
    "options": {"list": ["no", "yes"]},
    "gold": {"field": "label"},
}


def test_all_paper_tasks_are_shipped_and_parse():
    names = list_tasks()
    assert PAPER_TASKS <= set(names)
    tasks = [load_task(n) for n in names]
    paper = [t for t in tasks if t.paper]
    assert sum(t.category == "NLG" for t in paper) == 8 and sum(t.category == "NLU" for t in paper) == 21
    by_name = {t.name: t for t in tasks}
    assert by_name["copa"].normalization == "none" and by_name["record"].normalization == "none"
    assert by_name["boolq"].normalization == "per_token" and by_name["multirc"].metric == "f1a"
    assert {t.normalization for t in tasks} == {"per_token", "none"}  # the paper's rules; acc_norm is opt-in
    # Winograd twins share their options or their continuation; a WSC passage is asked once per candidate.
    assert by_name["winograd"].group_by == by_name["winogrande"].group_by == ("context_options", "continuation")
    assert by_name["wsc"].group_by == ("text",)
    assert {n for n, t in by_name.items() if t.group_by} == {"winograd", "winogrande", "wsc"}
    assert all(t.url for t in tasks), "every task says where to download its data"


@needs_shared
@pytest.mark.parametrize("name", sorted(PAPER_TASKS))
def test_task_with_data_loads(name):
    task = load_task(name)
    if not has_data(task, SHARED_TASKS):
        with pytest.raises(TaskDataError, match=f"data not found at .*download it from {task.url[:20]}"):
            load_data(task, SHARED_TASKS)
        return
    data = load_data(task, SHARED_TASKS, limit=50)
    assert data.examples
    for ex in data.examples:
        assert ex.requests[0][0].strip(), "non-empty prompt"
        assert ex.demo.strip()
        if task.output == "multiple_choice":
            assert len(ex.requests) >= 2 and ex.gold and all(0 <= g < len(ex.requests) for g in ex.gold)
        elif task.output == "generate":
            assert ex.answers or task.unanswerable
        else:
            assert ex.requests[0][1].strip()


def test_missing_field_names_the_field():
    spec = {k: v for k, v in MINIMAL.items() if k != "gold"}
    with pytest.raises(TaskError, match=r"my_task\.yaml: field 'gold': missing; add 'gold: \{field: NAME\}'"):
        parse_task(spec, "my_task.yaml")
    spec = {k: v for k, v in MINIMAL.items() if k != "metric"}
    with pytest.raises(TaskError, match="field 'metric': missing"):
        parse_task(spec, "my_task.yaml")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"metric": "bleu"}, "metric"),
        ({"prompt": "{{q"}, "prompt"),
        ({"prompt": "{{q|shout}}"}, "prompt"),
        ({"data": {"path": "x.jsonl", "reader": "nope"}}, "data.reader"),
        ({"colour": "blue"}, "colour"),
        ({"options": {"field": "a", "list": ["b"]}}, "options"),
        ({"normalization": "per_byte"}, "normalization"),
        ({"group_by": {"field": "pair"}}, "group_by"),
    ],
)
def test_invalid_fields_raise_task_error(change, field):
    with pytest.raises(TaskError, match=f"field '{field}'"):
        parse_task({**MINIMAL, **change}, "t.yaml")


def test_user_task_file_and_clear_errors(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    task = load_task(str(path))
    with pytest.raises(TaskDataError, match="data not found at .*t/val.jsonl"):
        load_data(task, tmp_path)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "val.jsonl").write_text('{"q": "Is it?", "label": 1}\n{"question": "x", "label": 0}\n')
    with pytest.raises(TaskError, match=r"mine\.yaml: record 2 \(counting from 1\) .*field 'q' not found"):
        load_data(task, tmp_path)
    (tmp_path / "grouped.yaml").write_text(yaml.safe_dump({**MINIMAL, "group_by": "pair"}))
    with pytest.raises(TaskError, match=r"record 1 \(counting from 1\) .*group_by: field 'pair' not found"):
        load_data(load_task_file(tmp_path / "grouped.yaml"), tmp_path)
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(TaskError, match="not valid YAML"):
        load_task_file(tmp_path / "broken.yaml")
    with pytest.raises(TaskError, match="unknown task 'nope'"):
        load_task("nope")


def test_no_data_folder_is_guessed_and_the_error_says_how_to_set_one(monkeypatch, tmp_path):
    """The installed package never assumes where it was cloned: no --data-root, no $GLAM_TASK_DATA, no data."""
    from glam.evals.harness import resolve_task_names
    from glam.evals.tasks import DATA_ENV, check_data, load_task, resolve_data_root

    monkeypatch.delenv(DATA_ENV, raising=False)
    (tmp_path / "work").mkdir()
    (tmp_path / "shared" / "data" / "tasks" / "copa").mkdir(parents=True)  # where the old default looked
    (tmp_path / "shared" / "data" / "tasks" / "copa" / "val.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path / "work")
    copa = load_task("copa")
    assert resolve_data_root() is None and not has_data(copa)
    with pytest.raises(TaskDataError, match=r"^task copa: no task data folder is set; pass --data-root DIR .*GLAM"):
        check_data(copa)
    with pytest.raises(TaskDataError, match=r"^--tasks all: no task data folder is set"):
        resolve_task_names("all")
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "shared" / "data" / "tasks"))
    assert has_data(copa) and resolve_task_names("copa") == ["copa"]


def test_a_gold_label_outside_the_options_is_refused_with_its_record(tmp_path):
    """Issue 28: two of four rows with "gold": 7 and two options were dropped silently (n 2, acc 100.0)."""
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(MINIMAL))
    (tmp_path / "t").mkdir()
    rows = [{"q": "a", "label": 1}, {"q": "b", "label": 7}, {"q": "c", "label": 0}, {"q": "d", "label": 7}]
    (tmp_path / "t" / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(TaskError) as err:
        load_data(load_task_file(tmp_path / "mine.yaml"), tmp_path)
    assert str(err.value) == (
        f"task file {tmp_path / 'mine.yaml'}: record 2 (counting from 1) of t/val.jsonl: gold 'label' is 7, but "
        "the record has 2 options (indices 0-1); fix the label or the task's 'gold.map'"
    )


def test_records_without_a_gold_answer_are_counted_and_reported(tmp_path):
    from glam.errors import GLaMWarning
    from glam.evals.harness import evaluate_task
    from glam.evals.testing import CharLanguageModel

    spec = {**MINIMAL, "gold": {"field": "answer", "match_options": True}}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "t").mkdir()
    rows = [{"q": "a", "answer": "yes"}, {"q": "b", "answer": "maybe"}, {"q": "c", "answer": "no"}]
    (tmp_path / "t" / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(GLaMWarning) as caught:
        row = evaluate_task(CharLanguageModel(), load_task_file(tmp_path / "mine.yaml"), data_root=tmp_path)
    assert [str(w.message) for w in caught] == [
        "task t: skipped 1 of 3 records of t/val.jsonl that have no gold answer; the scores count the others only"
    ]
    assert row["n"] == 2 and row["skipped"] == 1


def test_a_task_file_with_a_binary_tail_names_the_line(tmp_path):
    """Issue 28: a JSONL file with a NUL tail past the 8 KiB text check read 'line 1 column 1'."""
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(MINIMAL))
    (tmp_path / "t").mkdir()
    good = "".join(json.dumps({"q": f"question {i}", "label": i % 2}) + "\n" for i in range(400))
    assert len(good) > 8192
    (tmp_path / "t" / "val.jsonl").write_bytes(good.encode() + b"\x00" * 100 + b"\n")
    with pytest.raises(TaskError) as err:
        load_data(load_task_file(tmp_path / "mine.yaml"), tmp_path)
    assert str(err.value) == (
        f"task t: cannot read {tmp_path / 't' / 'val.jsonl'} with reader 'jsonl': line 401 holds NUL bytes: binary "
        "data, not text, from there on; cut the file off before it"
    )
    (tmp_path / "t" / "val.jsonl").write_text(good + '{"q": "cut off\n')
    with pytest.raises(TaskError, match=r"line 401 is not JSON \(Invalid control character at column 15\)"):
        load_data(load_task_file(tmp_path / "mine.yaml"), tmp_path)
