"""The evaluation protocol of GLaM §7 (after GPT-3), over any :class:`~glam.evals.model_api.LanguageModel`.

- Classification (``multiple_choice``): rank classification. Every option is scored as a continuation
  of the context; the highest log-likelihood wins, divided by the option's token count
  (``normalization: per_token``, the default) or not (``none``: COPA, ReCoRD); ``acc_norm`` is
  lm-evaluation-harness's per-character rule (``glam.evals.metrics.NORMALIZATIONS``). Binary tasks are two
  options. Accuracy (any gold option counts, for ReCoRD's several correct entities), or F1a over
  answer options for MultiRC.
- ``loglikelihood`` (LAMBADA): accuracy = the gold continuation is the greedy decode.
- Generation (``generate``): beam search (``EvalConfig.beam_size``, paper: 4), scored by exact match
  or token F1 after SQuAD normalisation, max over the gold aliases.

All requests of a task are collected first and sent to the model in chunks.

Few-shot: K demonstrations are drawn per example (:mod:`glam.evals.fewshot`); fewer exist when the pool
is smaller, and a model with a finite context (``max_length`` and ``count_tokens``, as
``GLaMLanguageModel`` has) sees only the last ones whole when the prefix is too long (the context is cut
from the left). Each result row reports the shots actually used (``shots_used``: min, mean, max of the
whole demonstrations in view), and a warning says so when that is fewer than asked.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from glam.config import EvalConfig
from glam.errors import GLaMWarning
from glam.evals import metrics
from glam.evals.fewshot import fewshot_prefix, sample_demonstrations
from glam.evals.model_api import LanguageModel
from glam.evals.tasks import (
    Example,
    Task,
    TaskData,
    TaskError,
    check_data,
    has_data,
    list_tasks,
    load_data,
    load_task,
    require_data_root,
)

Log = Callable[[str], None]


def _chunked(fn: Callable[[list], list], items: list, chunk_size: int) -> list:
    """Call ``fn`` on consecutive chunks of ``items`` and concatenate, checking the answer count."""
    out: list = []
    for start in range(0, len(items), chunk_size):
        chunk = items[start : start + chunk_size]
        answers = list(fn(chunk))
        if len(answers) != len(chunk):
            raise ValueError(f"the model answered {len(answers)} results for {len(chunk)} requests")
        out.extend(answers)
    return out


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def _option_texts(task: Task, example: Example) -> tuple[str, ...]:
    """The example's rendered options; for one built by hand without them, each continuation less the delimiter."""
    if example.options:
        return example.options
    delim = task.target_delimiter
    return tuple(cont[len(delim) :] if delim and cont.startswith(delim) else cont for _, cont in example.requests)


def _score_choices(task: Task, examples: list[Example], answers: list[tuple[float, bool, int]]) -> dict[str, Any]:
    """Rank classification over every example's options (``answers`` is flat, in request order)."""
    preds: dict[str, list[int]] = {norm: [] for norm in metrics.NORMALIZATIONS}
    pos = 0
    for ex in examples:
        results = answers[pos : pos + len(ex.requests)]
        pos += len(ex.requests)
        scored = list(zip(results, ex.requests, _option_texts(task, ex)))
        for norm, out in preds.items():
            out.append(_argmax([metrics.option_score(ll, n, cont, opt, norm) for (ll, _, n), (_, cont), opt in scored]))
    chosen = preds[task.normalization]
    extra = {
        metrics.NORMALIZATIONS[norm].metric: metrics.mean([float(p in ex.gold) for p, ex in zip(out, examples)])
        for norm, out in preds.items()
    }
    if task.metric == "f1a":
        labels = [ex.gold[0] for ex in examples]
        extra["em_per_question"] = metrics.grouped_exact_match(chosen, labels, [ex.group for ex in examples])
        return {"value": metrics.f1a(chosen, labels), "extra": extra, "predictions": chosen}
    return {"value": extra[metrics.NORMALIZATIONS[task.normalization].metric], "extra": extra, "predictions": chosen}


def _clean_generation(task: Task, text: str) -> str:
    """Cut at the first stop string, strip, and map the task's "unanswerable" phrase to the empty answer."""
    for stop in task.stop:
        if stop and stop in text:
            text = text[: text.index(stop)]
    text = text.strip()
    if task.unanswerable and metrics.normalize_answer(text) == metrics.normalize_answer(task.unanswerable):
        return ""
    return text


def _score_generations(task: Task, examples: list[Example], generations: list[str]) -> dict[str, Any]:
    preds = [_clean_generation(task, g) for g in generations]
    em = [metrics.max_over_gold(metrics.exact_match, p, ex.answers) for p, ex in zip(preds, examples)]
    f1 = [metrics.max_over_gold(metrics.token_f1, p, ex.answers) for p, ex in zip(preds, examples)]
    extra = {"em": metrics.mean(em), "f1": metrics.mean(f1)}
    return {"value": extra[task.metric], "extra": extra, "predictions": preds}


def demonstrations_in_view(
    count: Callable[[str], int], limit: int, task: Task, example: Example, demos: list, reserve: int = 0
) -> int:
    """How many of ``demos`` (the last ones) fit whole in ``limit`` tokens (counted by ``count``) before
    ``example``'s longest request, keeping ``reserve`` tokens free for generation."""
    room = limit - reserve - max(count(ctx + cont) for ctx, cont in example.requests)
    used = 0
    for demo in reversed(demos):
        room -= count(demo.demo + task.fewshot_separator)
        if room < 0:
            break
        used += 1
    return used


def _shots_used(model: LanguageModel, data: TaskData, demos: list[list], shots: int, reserve: int) -> dict:
    """``{"min", "mean", "max"}`` whole demonstrations in view per example; warns when fewer than ``shots``.
    A model without ``count_tokens`` and ``max_length`` has no context limit."""
    count, limit = getattr(model, "count_tokens", None), getattr(model, "max_length", None)
    if shots and count is not None and limit is not None:
        count = functools.lru_cache(maxsize=None)(count)  # the pool's demonstrations recur across examples
        used = [demonstrations_in_view(count, limit, data.task, ex, d, reserve) for ex, d in zip(data.examples, demos)]
    else:
        used = [len(d) for d in demos]
    summary = {"min": min(used), "mean": sum(used) / len(used), "max": max(used)}
    if shots and summary["min"] < shots:
        reasons = []
        if min(len(d) for d in demos) < shots:
            reasons.append(f"the few-shot pool holds {len(data.fewshot_pool)} examples")
        if any(u < len(d) for u, d in zip(used, demos)):
            reasons.append(f"the model's context ({limit} tokens) holds no more whole ones (the rest is cut)")
        warnings.warn(
            f"task {data.task.name}: asked for {shots} shots, used {summary['min']}-{summary['max']} "
            f"(mean {summary['mean']:.1f}): {' and '.join(reasons)}",
            GLaMWarning,
            stacklevel=3,
        )
    return summary


def run_requests(
    model: LanguageModel, data: TaskData, shots: int, config: EvalConfig, chunk_size: int = 512
) -> dict[str, Any]:
    """Build every request of ``data`` with ``shots`` demonstrations, query ``model``, and score.

    The returned dict also holds ``shots_used`` (see the module docstring)."""
    task, examples = data.task, data.examples
    demos = [sample_demonstrations(data, ex, shots, config.seed) for ex in examples]
    max_tokens = task.max_tokens or config.max_decode_tokens
    reserve = max_tokens + 1 if task.output == "generate" else 0  # a generated prompt also holds bos
    used = _shots_used(model, data, demos, shots, reserve)
    scored = _score(model, data, [fewshot_prefix(task, ds) for ds in demos], config, max_tokens, chunk_size)
    return {**scored, "shots_used": used}


def _score(
    model: LanguageModel, data: TaskData, prefixes: list[str], config: EvalConfig, max_tokens: int, chunk_size: int
) -> dict[str, Any]:
    task, examples = data.task, data.examples
    if task.output == "generate":
        contexts = [prefix + ex.requests[0][0] for prefix, ex in zip(prefixes, examples)]

        def generate(chunk: list[str]) -> list[str]:
            return model.generate(chunk, max_tokens=max_tokens, stop=list(task.stop), beam_size=config.beam_size)

        return _score_generations(task, examples, _chunked(generate, contexts, chunk_size))
    requests = [(prefix + ctx, cont) for prefix, ex in zip(prefixes, examples) for ctx, cont in ex.requests]
    answers = _chunked(model.loglikelihood, requests, chunk_size)
    if task.output == "loglikelihood":
        greedy = [float(is_greedy) for _, is_greedy, _ in answers]
        nll = -sum(ll for ll, _, _ in answers) / max(sum(n for _, _, n in answers), 1)
        return {"value": metrics.mean(greedy), "extra": {"nll_per_token": nll}, "predictions": greedy}
    return _score_choices(task, examples, answers)


def evaluate_task(
    model: LanguageModel,
    task: Task,
    *,
    shots: int | str = 0,
    limit: int | None = None,
    data_root: str | Path | None = None,
    config: EvalConfig | None = None,
) -> dict[str, Any]:
    """Evaluate one task; ``shots="few"`` uses the task's ``fewshot_k`` (GPT-3's choice). Returns one result row."""
    config = config or EvalConfig()
    k = task.fewshot_k if shots == "few" else int(shots)
    data = load_data(task, data_root, limit)
    if not data.examples:
        raise TaskError(f"task {task.name}: no usable examples in {data.data_path} ({data.skipped} skipped)")
    if data.skipped:
        total = data.skipped + len(data.examples) if limit is None else None
        of = f" of {total}" if total else ""
        warnings.warn(
            f"task {task.name}: skipped {data.skipped}{of} records of {data.data_path} that have no gold answer; "
            "the scores count the others only",
            GLaMWarning,
            stacklevel=2,
        )
    scored = run_requests(model, data, k, config)
    return {
        "task": task.name,
        "category": task.category,
        "group": task.group,
        "paper": task.paper,
        "shots": k,
        "shots_used": scored["shots_used"],
        "metric": task.metric,
        "value": scored["value"],
        "n": len(data.examples),
        "fewshot_source": data.fewshot_source if k else "none (zero-shot)",
        "normalization": task.normalization if task.output == "multiple_choice" else "",
        "data_path": data.data_path,
        "skipped": data.skipped,
        "extra": scored["extra"],
    }


def resolve_task_names(names: str | Sequence[str], data_root: str | Path | None = None, task_dirs=()) -> list[str]:
    """Expand a comma-separated list (or a list); ``all`` means every task whose data is present.

    Every named task file is parsed and its data looked for here, so a bad file or missing data fails
    before a model is loaded or any task runs (:class:`TaskError`, :class:`TaskDataError`)."""
    items = names.split(",") if isinstance(names, str) else list(names)
    out: list[str] = []
    for item in (s.strip() for s in items):
        if item == "all":
            require_data_root(data_root, "--tasks all")
            out += [n for n in list_tasks(task_dirs) if has_data(load_task(n, task_dirs), data_root)]
        elif item:
            check_data(load_task(item, task_dirs), data_root)  # before a model is loaded
            out.append(item)
    if not out:
        raise TaskError("no tasks selected; pass --tasks NAME[,NAME...] or --tasks all")
    return list(dict.fromkeys(out))


def evaluate(
    model: LanguageModel,
    tasks: str | Sequence[str],
    *,
    shots: int | str = 0,
    limit: int | None = None,
    data_root: str | Path | None = None,
    config: EvalConfig | None = None,
    task_dirs: Sequence[str | Path] = (),
    log: Log | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``tasks`` (names, YAML paths, or ``all``) and return the results dict.

    The dict has ``settings``, ``tasks`` (one row per task, see :func:`evaluate_task`) and ``averages``
    (per category, per paper group, and overall; see :func:`glam.evals.report.averages`).
    """
    from glam.evals.report import averages

    config = config or EvalConfig()
    rows = {}
    for name in resolve_task_names(tasks, data_root, tuple(task_dirs)):
        task = load_task(name, tuple(task_dirs))
        if log:
            log(f"evaluating {task.name} ({task.output}, shots={shots})")
        rows[task.name] = evaluate_task(model, task, shots=shots, limit=limit, data_root=data_root, config=config)
    settings = {"shots": shots, "limit": limit, "data_root": str(require_data_root(data_root)), "eval": asdict(config)}
    return {"settings": settings, "tasks": rows, "averages": averages(list(rows.values()))}
