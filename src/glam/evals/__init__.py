"""Evaluation harness: declarative tasks, the GLaM/GPT-3 protocol, perplexity, and an lm-eval adapter.

Model-agnostic: everything talks to a :class:`LanguageModel` (``model_api.py``). Typical use::

    from glam.evals import evaluate, print_results
    results = evaluate(model, "copa,boolq,triviaqa", shots=1, limit=100)
    print_results(results)
"""

from glam.evals.harness import evaluate, evaluate_task, resolve_task_names
from glam.evals.model_api import LanguageModel
from glam.evals.perplexity import evaluate_perplexity
from glam.evals.report import print_results, write_json
from glam.evals.tasks import Task, TaskDataError, TaskError, list_tasks, load_data, load_task

__all__ = [
    "LanguageModel",
    "Task",
    "TaskDataError",
    "TaskError",
    "evaluate",
    "evaluate_perplexity",
    "evaluate_task",
    "list_tasks",
    "load_data",
    "load_task",
    "print_results",
    "resolve_task_names",
    "write_json",
]
