"""Readers: one data file in, a list of flat records (dicts) out.

A task YAML names its reader (``reader: jsonl``); the generic readers cover JSON Lines, JSON, CSV and
TSV, and a few registered functions flatten formats that nest examples (SuperGLUE MultiRC and ReCoRD,
SQuAD, DROP, CoQA, QuAC, RACE) or are not key-value at all (HellaSwag's six-line text file). Readers
add two optional bookkeeping keys: ``_doc`` (examples sharing it come from one source document and
are never each other's few-shot demonstrations) and ``_group`` (MultiRC: the question an answer
option belongs to). Files are read under glam's text policy (:mod:`glam.files`): compressed files
(``.bz2``, ``.gz``) are opened transparently, bytes that are not UTF-8 become U+FFFD (counted, one
warning), and a file that is not text is refused.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from glam.files import read_text

Record = dict[str, Any]
Reader = Callable[..., list[Record]]
READERS: dict[str, Reader] = {}


def register_reader(name: str) -> Callable[[Reader], Reader]:
    """Register ``fn(path, **args) -> list[dict]`` under ``name`` for use as ``reader: name`` in task files."""

    def wrap(fn: Reader) -> Reader:
        READERS[name] = fn
        return fn

    return wrap


def open_text(path: Path) -> TextIO:
    """A text file as a stream (decompressed by extension), read under glam's text policy."""
    return io.StringIO(read_text(str(path)), newline="")


def _load_json(path: Path) -> Any:
    with open_text(path) as f:
        return json.load(f)


# Generic readers --------------------------------------------------------------------------------


@register_reader("jsonl")
def read_jsonl(path: Path) -> list[Record]:
    """One JSON object per non-empty line; a line that is not JSON is named by its number."""
    records = []
    with open_text(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if "\x00" in line:
                    why = "holds NUL bytes: binary data, not text, from there on; cut the file off before it"
                else:
                    why = f"is not JSON ({exc.msg.removesuffix(' at')} at column {exc.colno}): {line[:60]!r}"
                raise ValueError(f"line {number} {why}") from None
    return records


@register_reader("json")
def read_json(path: Path, records: str = "") -> list[Record]:
    """A JSON list of objects, or the list found at dotted key ``records`` (e.g. ``data``)."""
    value = _load_json(path)
    for key in filter(None, records.split(".")):
        value = value[key]
    if not isinstance(value, list):
        raise ValueError(f"{path}: expected a JSON list of records (set reader_args.records to its key)")
    return value


@register_reader("csv")
def read_csv(path: Path, delimiter: str = ",") -> list[Record]:
    """A delimited file with a header row; every value is a string."""
    with open_text(path) as f:
        return [dict(row) for row in csv.DictReader(f, delimiter=delimiter)]


@register_reader("tsv")
def read_tsv(path: Path) -> list[Record]:
    """Tab-separated values with a header row."""
    return read_csv(path, delimiter="\t")


# Task-specific readers --------------------------------------------------------------------------


@register_reader("hellaswag_lines")
def read_hellaswag_lines(path: Path) -> list[Record]:
    """Six lines per example: ``activity_label: ctx``, the gold index, then four endings."""
    with open_text(path) as f:
        lines = [line.rstrip("\n") for line in f]
    if len(lines) % 6 not in (0, 1) or (len(lines) % 6 == 1 and lines[-1]):
        raise ValueError(f"{path}: expected 6 lines per example, got {len(lines)} lines")
    return [
        {"ctx": lines[i], "label": int(lines[i + 1]), "endings": lines[i + 2 : i + 6]}
        for i in range(0, len(lines) - 5, 6)
    ]


@register_reader("openbookqa_tsv")
def read_openbookqa_tsv(path: Path) -> list[Record]:
    """The original OpenBookQA TSV: stem, ``(A) .. (B) ..`` choices, answer key letter."""
    out = []
    for row in read_tsv(path):
        choices = [c.strip() for c in re.split(r"\([A-Z]\)\s*", row["Choices"]) if c.strip()]
        out.append({"id": row["ID"], "question": row["Question Stem"], "choices": choices, "answer": row["Answer Key"]})
    return out


@register_reader("superglue_multirc")
def read_superglue_multirc(path: Path) -> list[Record]:
    """SuperGLUE MultiRC: one record per answer option, grouped by question, documents = passages."""
    out = []
    for p_index, item in enumerate(read_jsonl(path)):
        passage = item["passage"]
        for question in passage["questions"]:
            group = f"{item.get('idx', p_index)}-{question['idx']}"
            for answer in question["answers"]:
                out.append(
                    {
                        "passage": passage["text"],
                        "question": question["question"],
                        "answer": answer["text"],
                        "label": int(answer.get("label", 0)),
                        "_group": group,
                        "_doc": f"passage-{p_index}",
                    }
                )
    return out


def _record_passage(text: str) -> str:
    """ReCoRD passage with its ``@highlight`` lines turned into a bulleted summary."""
    body, *highlights = text.strip().split("\n@highlight\n")
    return body + "".join(f"\n- {h}" for h in highlights)


@register_reader("superglue_record")
def read_superglue_record(path: Path) -> list[Record]:
    """SuperGLUE ReCoRD (JSONL, or the original JSON with a ``data`` list): one record per query.

    ``entities`` are the candidate fillers (unique, in passage order; spans are end-inclusive);
    ``query_left`` / ``query_right`` surround the ``@placeholder`` they are substituted into.
    """
    items = read_json(path, "data") if path.suffix == ".json" else read_jsonl(path)
    out = []
    for p_index, item in enumerate(items):
        text = item["passage"]["text"]
        entities = list(dict.fromkeys(text[e["start"] : e["end"] + 1] for e in item["passage"]["entities"]))
        for qa in item["qas"]:
            left, _, right = qa["query"].partition("@placeholder")
            answers = list(dict.fromkeys(a["text"] for a in qa.get("answers", [])))
            out.append(
                {
                    "passage": _record_passage(text),
                    "query": qa["query"],
                    "query_left": left,
                    "query_right": right,
                    "entities": entities,
                    "answers": answers,
                    "_doc": f"passage-{p_index}",
                }
            )
    return out


@register_reader("squad")
def read_squad(path: Path) -> list[Record]:
    """SQuAD v1.1 / v2.0 JSON: one record per question; unanswerable questions have ``answers: []``."""
    out = []
    for article in read_json(path, "data"):
        for p_index, paragraph in enumerate(article["paragraphs"]):
            for qa in paragraph["qas"]:
                answers = [] if qa.get("is_impossible") else [a["text"] for a in qa["answers"]]
                out.append(
                    {
                        "id": qa["id"],
                        "title": article.get("title", ""),
                        "context": paragraph["context"],
                        "question": qa["question"],
                        "answers": list(dict.fromkeys(answers)),
                        "_doc": f"{article.get('title', '')}-{p_index}",
                    }
                )
    return out


def _drop_answer_text(answer: dict) -> str:
    if answer.get("number"):
        return str(answer["number"])
    if answer.get("spans"):
        return " ".join(answer["spans"])
    date = answer.get("date") or {}
    return " ".join(str(date[k]) for k in ("day", "month", "year") if date.get(k))


@register_reader("drop")
def read_drop(path: Path) -> list[Record]:
    """DROP JSON (``{passage_id: {passage, qa_pairs}}``): one record per question.

    ``answers`` holds the main answer and the validated alternatives, each as text (number, the
    spans joined by spaces, or ``day month year``).
    """
    out = []
    for passage_id, item in _load_json(path).items():
        for qa in item["qa_pairs"]:
            candidates = [qa["answer"], *qa.get("validated_answers", [])]
            answers = list(dict.fromkeys(filter(None, map(_drop_answer_text, candidates))))
            out.append(
                {
                    "id": qa.get("query_id", ""),
                    "passage": item["passage"].strip(),
                    "question": qa["question"],
                    "answers": answers,
                    "_doc": passage_id,
                }
            )
    return out


def _history(turns: list[tuple[str, str]]) -> str:
    """Previous conversation turns as ``Q: ...\\nA: ...`` blocks, each followed by a blank line."""
    return "".join(f"Q: {q}\nA: {a}\n\n" for q, a in turns)


@register_reader("coqa")
def read_coqa(path: Path) -> list[Record]:
    """CoQA JSON: one record per turn, with the earlier turns (gold answers) as ``history``."""
    out = []
    for story in read_json(path, "data"):
        turns: list[tuple[str, str]] = []
        extra = story.get("additional_answers") or {}
        for i, (question, answer) in enumerate(zip(story["questions"], story["answers"])):
            aliases = [answer["input_text"]] + [alt[i]["input_text"] for alt in extra.values() if i < len(alt)]
            out.append(
                {
                    "id": f"{story['id']}-{question['turn_id']}",
                    "story": story["story"],
                    "history": _history(turns),
                    "question": question["input_text"],
                    "answers": list(dict.fromkeys(aliases)),
                    "_doc": story["id"],
                }
            )
            turns.append((question["input_text"], answer["input_text"]))
    return out


@register_reader("quac")
def read_quac(path: Path) -> list[Record]:
    """QuAC JSON: one record per question with the dialogue so far; ``CANNOTANSWER`` becomes ``answers: []``."""
    out = []
    for article in read_json(path, "data"):
        for paragraph in article["paragraphs"]:
            context = paragraph["context"].removesuffix("CANNOTANSWER").strip()
            turns: list[tuple[str, str]] = []
            for qa in paragraph["qas"]:
                texts = [a["text"] for a in qa["answers"]]
                answers = [] if "CANNOTANSWER" in texts else list(dict.fromkeys(texts))
                out.append(
                    {
                        "id": qa["id"],
                        "title": article.get("title", ""),
                        "section_title": article.get("section_title", ""),
                        "context": context,
                        "history": _history(turns),
                        "question": qa["question"],
                        "answers": answers,
                        "_doc": paragraph.get("id", context[:64]),
                    }
                )
                turns.append((qa["question"], qa.get("orig_answer", qa["answers"][0])["text"]))
    return out


@register_reader("race")
def read_race(path: Path) -> list[Record]:
    """RACE: one JSON file per article (article, questions, options, answers); one record per question."""
    item = _load_json(path)
    return [
        {
            "article": item["article"],
            "question": question,
            "options": options,
            "answer": answer,
            "_doc": item.get("id", path.name),
        }
        for question, options, answer in zip(item["questions"], item["options"], item["answers"])
    ]
