"""Declarative tasks: one YAML file per task, parsed into a :class:`Task`, loaded into :class:`Example` s.

A task file says where the examples are, how to read them, how to turn a record into a prompt and
options (or gold answers), and how to score. The format is documented field by field in
``docs/tasks.md``; every mistake raises :class:`TaskError` naming the file, the field and the fix.

Each :class:`Example` is already in the model's terms: the ``(context, continuation)`` requests to
score (one per option), or the context to generate from plus the gold answers; and ``demo``, the
example rendered with its gold answer, used when it serves as a few-shot demonstration.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glam.errors import GLaMError, TaskError
from glam.evals import template
from glam.evals.metrics import NORMALIZATIONS
from glam.evals.readers import READERS
from glam.files import load_yaml_file

TASK_DIR = Path(__file__).parent / "tasks"
DATA_ENV = "GLAM_TASK_DATA"  # the task data folder when no data_root / --data-root is given

OUTPUTS = ("multiple_choice", "generate", "loglikelihood")
METRICS = {"multiple_choice": ("acc", "f1a"), "generate": ("em", "f1"), "loglikelihood": ("acc",)}
SCORINGS = ("full", "partial")
CATEGORIES = ("NLG", "NLU")
KNOWN_KEYS = {
    "name", "description", "category", "group", "paper", "output", "metric", "data", "prompt", "options",
    "scoring", "continuation", "gold", "answers", "normalization", "unanswerable", "target_delimiter",
    "fewshot_separator", "fewshot_k", "stop", "max_tokens", "fields", "group_by",
}  # fmt: skip
DATA_KEYS = {"path", "reader", "reader_args", "fewshot_path", "url"}
READER_BY_SUFFIX = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv"}


class TaskDataError(TaskError):
    """A task's data files are absent from the data root."""


@dataclass(frozen=True)
class Task:
    """A parsed task file. Field meanings: ``docs/tasks.md``."""

    name: str
    source: str
    category: str
    group: str
    output: str
    metric: str
    paths: tuple[str, ...]
    reader: str
    prompt: str
    description: str = ""
    paper: bool = True
    reader_args: dict = field(default_factory=dict)
    fewshot_paths: tuple[str, ...] = ()
    url: str = ""
    options: dict = field(default_factory=dict)
    scoring: str = "full"
    continuation: str = ""
    gold: dict = field(default_factory=dict)
    answers: dict = field(default_factory=dict)
    normalization: str = "per_token"
    unanswerable: str = ""
    target_delimiter: str = " "
    fewshot_separator: str = "\n\n"
    fewshot_k: int = 0
    stop: tuple[str, ...] = ("\n",)
    max_tokens: int = 0
    fields: dict = field(default_factory=dict)
    group_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class Example:
    """One evaluation item in model terms (see the module docstring).

    ``options``: the rendered option texts (multiple choice; ``acc_norm`` divides by their length).
    ``group_keys``: ``FIELD=VALUE`` for each of the task's ``group_by`` fields; a demonstration never
    shares one with the example it is shown for (a Winograd twin is not its pair's demonstration).
    """

    index: int
    doc: str
    requests: tuple[tuple[str, str], ...]
    demo: str
    gold: tuple[int, ...] = ()
    answers: tuple[str, ...] = ()
    group: str = ""
    options: tuple[str, ...] = ()
    group_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskData:
    """A task's examples, its few-shot pool and where they came from.

    ``same_split``: the pool is the evaluation split itself (all of it, even under a limit), so a
    demonstration must never come from the evaluated example's own document.
    """

    task: Task
    examples: list[Example]
    fewshot_pool: list[Example]
    same_split: bool
    data_path: str
    fewshot_source: str
    skipped: int = 0


# Parsing -----------------------------------------------------------------------------------------


def _fail(source: str, key: str, message: str) -> TaskError:
    return TaskError(f"task file {source}: field '{key}': {message}")


def _paths(value: Any, source: str, key: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not items or not isinstance(items, list) or not all(isinstance(p, str) and p for p in items):
        raise _fail(source, key, "give a path relative to the data root, or a list of them (the first present wins)")
    return tuple(items)


def _choice(spec: dict, key: str, options: tuple, source: str, default: str | None = None) -> str:
    value = spec.get(key, default)
    if value is None:
        raise _fail(source, key, f"missing; add '{key}: <{' | '.join(options)}>'")
    if value not in options:
        raise _fail(source, key, f"got {value!r}; choose one of {', '.join(options)}")
    return value


def _check_templates(spec: dict, source: str) -> None:
    checks = [("prompt", spec.get("prompt")), ("continuation", spec.get("continuation"))]
    checks += [("options.template", spec.get("options", {}).get("template"))]
    checks += [(f"options.list[{i}]", t) for i, t in enumerate(spec.get("options", {}).get("list") or [])]
    for key, text in checks:
        if text is not None:
            try:
                template.check(text)
            except template.TemplateError as exc:
                raise _fail(source, key, str(exc)) from None


def _check_output_fields(spec: dict, output: str, source: str) -> None:
    """The fields each kind of task needs: options and gold, answers, or a continuation."""
    if output == "multiple_choice":
        options = spec.get("options")
        if not isinstance(options, dict) or ("field" in options) == ("list" in options):
            raise _fail(source, "options", "give either 'options: {field: NAME}' or 'options: {list: [...]}'")
        gold = spec.get("gold")
        if not isinstance(gold, dict) or not isinstance(gold.get("field"), str):
            raise _fail(source, "gold", "missing; add 'gold: {field: NAME}' (optionally 'map:' or 'match_options:')")
    elif output == "generate":
        answers = spec.get("answers")
        if not isinstance(answers, dict) or not isinstance(answers.get("field"), (str, list)):
            raise _fail(source, "answers", "missing; add 'answers: {field: NAME}' (a string or list field)")
    if (output == "loglikelihood" or spec.get("scoring") == "partial") and not spec.get("continuation"):
        raise _fail(source, "continuation", "missing; partial scoring and loglikelihood tasks score this template")


def _group_by(value: Any, source: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(f, str) and f for f in items):
        raise _fail(source, "group_by", "give a record field, or a list of them (rows sharing a value are a group)")
    return tuple(items)


def _check_derived_fields(fields: Any, source: str) -> None:
    if not isinstance(fields, dict):
        raise _fail(source, "fields", "give a mapping NAME: {from: FIELD, map: {VALUE: TEXT, ...}}")
    for name, rule in fields.items():
        if not isinstance(rule, dict) or not isinstance(rule.get("from"), str) or not isinstance(rule.get("map"), dict):
            raise _fail(source, f"fields.{name}", "give {from: FIELD, map: {VALUE: TEXT, ...}}")


def parse_task(spec: Any, source: str) -> Task:
    """Validate a task mapping (the parsed YAML of ``source``) and build a :class:`Task`."""
    if not isinstance(spec, dict):
        raise TaskError(f"task file {source}: expected a mapping of fields (name:, data:, prompt:, ...)")
    unknown = sorted(set(spec) - KNOWN_KEYS)
    if unknown:
        raise _fail(source, unknown[0], f"unknown field; valid fields are {', '.join(sorted(KNOWN_KEYS))}")
    for key in ("name", "group", "prompt"):
        if not isinstance(spec.get(key), str) or (key != "prompt" and not spec[key]):
            raise _fail(source, key, f"missing or not a string; add '{key}: ...'")
    category = _choice(spec, "category", CATEGORIES, source)
    output = _choice(spec, "output", OUTPUTS, source)
    metric = _choice(spec, "metric", METRICS[output], source)
    data = spec.get("data")
    if not isinstance(data, dict) or "path" not in data:
        raise _fail(source, "data.path", "missing; add 'data: {path: FOLDER/FILE}' relative to the data root")
    if set(data) - DATA_KEYS:
        raise _fail(source, f"data.{sorted(set(data) - DATA_KEYS)[0]}", f"unknown; valid: {', '.join(DATA_KEYS)}")
    paths = _paths(data["path"], source, "data.path")
    reader = data.get("reader") or READER_BY_SUFFIX.get(Path(paths[0]).suffix)
    if reader not in READERS:
        raise _fail(source, "data.reader", f"got {reader!r}; choose one of {', '.join(sorted(READERS))}")
    _check_output_fields(spec, output, source)
    _check_templates(spec, source)
    _check_derived_fields(spec.get("fields") or {}, source)
    return Task(
        name=spec["name"],
        source=source,
        category=category,
        group=spec["group"],
        output=output,
        metric=metric,
        paths=paths,
        reader=reader,
        prompt=spec["prompt"],
        description=spec.get("description", ""),
        paper=bool(spec.get("paper", True)),
        reader_args=dict(data.get("reader_args") or {}),
        fewshot_paths=_paths(data["fewshot_path"], source, "data.fewshot_path") if "fewshot_path" in data else (),
        url=data.get("url", ""),
        options=dict(spec.get("options") or {}),
        scoring=_choice(spec, "scoring", SCORINGS, source, "full"),
        continuation=spec.get("continuation", ""),
        gold=dict(spec.get("gold") or {}),
        answers=dict(spec.get("answers") or {}),
        normalization=_choice(spec, "normalization", tuple(NORMALIZATIONS), source, "per_token"),
        unanswerable=spec.get("unanswerable", ""),
        target_delimiter=spec.get("target_delimiter", " "),
        fewshot_separator=spec.get("fewshot_separator", "\n\n"),
        fewshot_k=int(spec.get("fewshot_k", 0)),
        stop=tuple(spec.get("stop", ["\n"])),
        max_tokens=int(spec.get("max_tokens", 0)),
        fields=dict(spec.get("fields") or {}),
        group_by=_group_by(spec.get("group_by") or [], source),
    )


def load_task_file(path: str | Path) -> Task:
    """Parse one task YAML file."""
    return parse_task(load_yaml_file(str(path), "task file", TaskError), str(path))


def list_tasks(task_dirs: tuple[str | Path, ...] = ()) -> list[str]:
    """Names of the shipped tasks plus those in ``task_dirs`` (one ``NAME.yaml`` each), sorted."""
    names = {p.stem for d in (TASK_DIR, *map(Path, task_dirs)) for p in Path(d).glob("*.yaml")}
    return sorted(names)


def load_task(name: str, task_dirs: tuple[str | Path, ...] = ()) -> Task:
    """A task by name (``task_dirs`` first, then the shipped ones) or by the path of its YAML file."""
    if name.endswith((".yaml", ".yml")):
        return load_task_file(name)
    for directory in (*map(Path, task_dirs), TASK_DIR):
        candidate = directory / f"{name}.yaml"
        if candidate.exists():
            return load_task_file(candidate)
    raise TaskError(f"unknown task {name!r}; choose from {', '.join(list_tasks(task_dirs))} or give a YAML path")


# Data --------------------------------------------------------------------------------------------


def resolve_data_root(explicit: str | Path | None = None) -> Path | None:
    """The task data folder: ``explicit``, else ``$GLAM_TASK_DATA``, else ``None`` (none is set: glam
    does not guess where its data lives; :func:`check_data` then says how to set one)."""
    if explicit:
        return Path(explicit)
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    return None


def require_data_root(explicit: str | Path | None = None, what: str = "task data") -> Path:
    """:func:`resolve_data_root`, or :class:`TaskDataError` saying how to name the folder."""
    root = resolve_data_root(explicit)
    if root is None:
        raise TaskDataError(
            f"{what}: no task data folder is set; pass --data-root DIR (data_root= in Python), the folder "
            f"holding the tasks' data (copa/, boolq/, ...), or set ${DATA_ENV}"
        )
    return root


def find_files(root: Path, paths: tuple[str, ...]) -> tuple[str, list[Path]] | None:
    """The first of ``paths`` (globs allowed) present under ``root``, with its files; ``None`` if none is."""
    for rel in paths:
        files = sorted(Path(p) for p in glob.glob(str(root / rel)))
        if files:
            return rel, files
    return None


def has_data(task: Task, data_root: str | Path | None = None) -> bool:
    """Whether ``task``'s evaluation data is present (never, when no data folder is set)."""
    root = resolve_data_root(data_root)
    return root is not None and find_files(root, task.paths) is not None


def check_data(task: Task, data_root: str | Path | None = None) -> tuple[str, list[Path]]:
    """``task``'s evaluation data (the path that matched and its files), or :class:`TaskDataError` naming
    where it was looked for and where to get it."""
    root = require_data_root(data_root, f"task {task.name}")
    found = find_files(root, task.paths)
    if found is None:
        where = " or ".join(str(root / p) for p in task.paths)
        hint = f"download it from {task.url} and place it there" if task.url else "place the file there"
        raise TaskDataError(
            f"task {task.name}: data not found at {where}; {hint} (or point --data-root / ${DATA_ENV} elsewhere)"
        )
    return found


def _read(task: Task, files: list[Path]) -> list[dict]:
    records = []
    for path in files:
        try:
            rows = READERS[task.reader](path, **task.reader_args)
        except GLaMError:
            raise  # already one line naming the file (e.g. it is not text)
        except (KeyError, ValueError, TypeError) as exc:
            detail = str(exc) if type(exc) is ValueError else repr(exc)  # a reader's own message reads as it is
            raise TaskError(f"task {task.name}: cannot read {path} with reader '{task.reader}': {detail}") from None
        for i, row in enumerate(rows):
            row.setdefault("_doc", f"{path.name}:{i}")
        records.extend(rows)
    return records


def _derive(task: Task, record: dict) -> dict:
    """``record`` plus the task's derived fields (``fields: {NAME: {from: FIELD, map: {...}}}``)."""
    extra = {}
    for name, rule in task.fields.items():
        value = str(template.lookup(record, rule["from"])).lower()
        mapping = {str(k).lower(): v for k, v in rule["map"].items()}
        if value not in mapping:
            raise template.TemplateError(f"fields.{name}: value {value!r} of {rule['from']!r} is not in its map")
        extra[name] = mapping[value]
    return {**record, **extra}


def _gold_indices(task: Task, record: dict, items: list) -> tuple[int, ...]:
    """Gold option indices: the gold field mapped through ``gold.map``, or matched against the option items."""
    value = template.lookup(record, task.gold["field"])
    values = value if isinstance(value, list) else [value]
    if task.gold.get("match_options"):
        return tuple(i for i, item in enumerate(items) if item in values)
    mapping = {str(k).lower(): v for k, v in (task.gold.get("map") or {}).items()}
    out = []
    for v in values:
        index = mapping.get(str(v).lower(), v) if mapping else v
        if isinstance(index, str) and index.lstrip("-").isdigit():
            index = int(index)
        if not isinstance(index, int) or isinstance(index, bool):
            raise template.TemplateError(f"gold value {v!r} is not an option index; add it to 'gold.map'")
        out.append(index)
    return tuple(out)


def _options(task: Task, record: dict) -> tuple[list[str], list]:
    """The rendered option texts and the raw items they came from."""
    if "list" in task.options:
        texts = [template.render(t, record) for t in task.options["list"]]
        return texts, texts
    items = template.lookup(record, task.options["field"])
    if not isinstance(items, list):
        raise template.TemplateError(f"options field {task.options['field']!r} is not a list")
    fill = task.options.get("template", "{{option}}")
    return [template.render(fill, {**record, "option": item}) for item in items], items


def _group_keys(task: Task, record: dict) -> tuple[str, ...]:
    """``FIELD=VALUE`` (JSON) for each ``group_by`` field: the groups this record belongs to."""
    keys = []
    for name in task.group_by:
        try:
            value = template.lookup(record, name)
        except template.TemplateError as exc:
            raise template.TemplateError(f"group_by: {exc}") from None
        keys.append(f"{name}={json.dumps(value, sort_keys=True, default=str)}")
    return tuple(keys)


def build_example(task: Task, record: dict, index: int) -> Example | None:
    """Render ``record`` into an :class:`Example`; ``None`` when it has no usable gold answer."""
    record = _derive(task, record)
    prompt = template.render(task.prompt, record)
    delim = task.target_delimiter
    doc, group = str(record.get("_doc", index)), str(record.get("_group", ""))
    keys = _group_keys(task, record)
    if task.output == "generate":
        names = task.answers["field"] if isinstance(task.answers["field"], list) else [task.answers["field"]]
        values = [template.lookup(record, n) for n in names]
        flat = [v for value in values for v in (value if isinstance(value, list) else [value])]
        answers = tuple(dict.fromkeys(str(a) for a in flat if str(a).strip()))
        if not answers and not task.unanswerable:
            return None
        demo = prompt + delim + (answers[0] if answers else task.unanswerable)
        return Example(index, doc, ((prompt, ""),), demo, answers=answers, group=group, group_keys=keys)
    if task.output == "loglikelihood":
        continuation = delim + template.render(task.continuation, record)
        return Example(
            index, doc, ((prompt, continuation),), prompt + continuation, gold=(0,), group=group, group_keys=keys
        )
    options, items = _options(task, record)
    if task.scoring == "partial":
        continuation = delim + template.render(task.continuation, record)
        requests = tuple((prompt + opt, continuation) for opt in options)
    else:
        requests = tuple((prompt, delim + opt) for opt in options)
    gold = _gold_indices(task, record, items)
    if not gold:
        return None
    wrong = [g for g in gold if not 0 <= g < len(options)]
    if wrong:  # a wrong label would drop the row silently and inflate the accuracy of the others
        raise template.TemplateError(
            f"gold {task.gold['field']!r} is {wrong[0]}, but the record has {len(options)} options "
            f"(indices 0-{len(options) - 1}); fix the label or the task's 'gold.map'"
        )
    demo = "".join(requests[gold[0]])
    return Example(index, doc, requests, demo, gold=gold, group=group, options=tuple(options), group_keys=keys)


def _build_all(task: Task, records: list[dict], where: str) -> tuple[list[Example], int]:
    examples, skipped = [], 0
    for i, record in enumerate(records):
        try:
            example = build_example(task, record, i)
        except template.TemplateError as exc:
            raise TaskError(f"task file {task.source}: record {i + 1} (counting from 1) of {where}: {exc}") from None
        if example is None:
            skipped += 1
        else:
            examples.append(example)
    return examples, skipped


def load_data(task: Task, data_root: str | Path | None = None, limit: int | None = None) -> TaskData:
    """Read and render ``task``'s examples (the first ``limit`` if given) and its few-shot pool."""
    root = require_data_root(data_root, f"task {task.name}")
    rel, files = check_data(task, root)
    examples, skipped = _build_all(task, _read(task, files), rel)
    evaluated = examples if limit is None else examples[:limit]
    pool_found = find_files(root, task.fewshot_paths) if task.fewshot_paths else None
    if pool_found is None:
        source = "same split, excluding the example"
        return TaskData(task, evaluated, examples, True, rel, source, skipped)
    pool, _ = _build_all(task, _read(task, pool_found[1]), pool_found[0])
    return TaskData(task, evaluated, pool, False, rel, f"separate split: {pool_found[0]}", skipped)
