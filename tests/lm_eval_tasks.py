"""Local lm-eval task files shared by the adapter and server tests: a COPA task over a JSONL file."""

from __future__ import annotations

import json
from pathlib import Path

# ``{name}`` and ``{data}`` are filled with str.format (the Jinja braces are doubled)
COPA_LM_EVAL = """task: {name}
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
  - metric: acc_norm
"""

_ROWS = [
    {"premise": "The man turned on the faucet.", "choice1": "The toilet filled with water.",
     "choice2": "Water flowed from the spout.", "question": "effect", "label": 1, "idx": 0},
    {"premise": "The girl found a bug in her cereal.", "choice1": "She poured milk in the bowl.",
     "choice2": "She lost her appetite.", "question": "effect", "label": 1, "idx": 1},
    {"premise": "The woman retired.", "choice1": "She received her pension.",
     "choice2": "She paid off her mortgage.", "question": "effect", "label": 0, "idx": 2},
    {"premise": "I wanted to conserve energy.", "choice1": "I swept the floor.",
     "choice2": "I shut off the lights.", "question": "effect", "label": 1, "idx": 3},
]  # fmt: skip


def copa_rows(tasks_root: Path, limit: int, fallback: int = 3) -> list[str]:
    """The first ``limit`` JSONL rows of the real COPA validation set when present, else ``fallback``
    hand-written ones."""
    real = Path(tasks_root) / "copa" / "val.jsonl"
    if real.exists():
        return real.read_text().splitlines()[:limit]
    return [json.dumps(r) for r in _ROWS[:fallback]]
