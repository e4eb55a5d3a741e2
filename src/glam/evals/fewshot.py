"""Few-shot demonstrations: K examples drawn with a seed, concatenated before the evaluated one.

Following GPT-3 (and GLaM §7), demonstrations are random examples of the training split when the
task has one; otherwise they come from the evaluation split itself, never from the evaluated
example's own document (for MultiRC, CoQA, QuAC, ReCoRD a document holds several examples, and a
demonstration from the same passage would leak the answer). A task with ``group_by`` never shows an
example a demonstration from its own group, from either split (a Winograd sentence's twin differs by
one word and has the other answer: as a demonstration it would give the answer away). The draw depends
only on ``(seed, task name, example index)``, so results do not change with ``--limit`` or batching.
"""

from __future__ import annotations

import random

from glam.evals.tasks import Example, Task, TaskData


def sample_demonstrations(data: TaskData, example: Example, k: int, seed: int) -> list[Example]:
    """``k`` demonstrations for ``example`` (fewer only if the pool is smaller), deterministic in ``seed``."""
    pool = data.fewshot_pool
    if k <= 0 or not pool:
        return []
    rng = random.Random(f"{seed}/{data.task.name}/{example.index}")
    groups = set(example.group_keys)
    picks: list[Example] = []
    tried: set[int] = set()
    while len(picks) < k and len(tried) < len(pool):
        i = rng.randrange(len(pool))
        if i in tried:
            continue
        tried.add(i)
        same_doc = data.same_split and pool[i].doc == example.doc
        if not same_doc and groups.isdisjoint(pool[i].group_keys):
            picks.append(pool[i])
    return picks


def fewshot_prefix(task: Task, demos: list[Example]) -> str:
    """The demonstrations joined by the task's separator, ending with one separator (``""`` at zero shots)."""
    return "".join(d.demo + task.fewshot_separator for d in demos)
