"""A tiny, safe prompt template language: ``{{field}}``, ``{{a.b.0}}`` and ``{{field|filter|filter}}``.

No code runs: a template is text with placeholders naming record fields (dotted paths index into
nested dicts and lists) and a fixed set of string filters. Errors are :class:`TemplateError` with the
offending placeholder, so the task loader can name the task file and field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from glam.errors import GLaMError

PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


class TemplateError(GLaMError):
    """A malformed template or a placeholder naming a field the record lacks."""


def _lowerfirst(s: str) -> str:
    return s[:1].lower() + s[1:]


def _capfirst(s: str) -> str:
    return s[:1].upper() + s[1:]


def _no_final_period(s: str) -> str:
    s = s.rstrip()
    return s[:-1] if s.endswith(".") else s


def _bullets(value: Any) -> str:
    items = value if isinstance(value, list) else [value]
    return "\n".join(f"- {item}" for item in items)


FILTERS: dict[str, Callable[[Any], str]] = {
    "strip": lambda v: str(v).strip(),
    "lower": lambda v: str(v).lower(),
    "upper": lambda v: str(v).upper(),
    "lowerfirst": lambda v: _lowerfirst(str(v)),
    "capfirst": lambda v: _capfirst(str(v)),
    "no_final_period": lambda v: _no_final_period(str(v)),
    "first": lambda v: str(v[0]) if isinstance(v, list) and v else str(v),
    "join_comma": lambda v: ", ".join(map(str, v)) if isinstance(v, list) else str(v),
    "bullets": _bullets,
}


def check(template: str) -> list[str]:
    """Validate ``template`` and return the field paths it names (raises :class:`TemplateError`)."""
    if not isinstance(template, str):
        raise TemplateError(f"a template must be a string, got {type(template).__name__}")
    stripped = PLACEHOLDER.sub("", template)
    if "{{" in stripped or "}}" in stripped:
        raise TemplateError(f"unbalanced '{{{{' or '}}}}' in {template!r}")
    fields = []
    for body in PLACEHOLDER.findall(template):
        name, *filters = [part.strip() for part in body.split("|")]
        if not NAME.match(name):
            raise TemplateError(f"'{{{{{body}}}}}': {name!r} is not a field name (letters, digits, _, dots)")
        for f in filters:
            if f not in FILTERS:
                raise TemplateError(f"'{{{{{body}}}}}': unknown filter {f!r}; choose one of {', '.join(FILTERS)}")
        fields.append(name)
    return fields


def lookup(record: Mapping[str, Any], path: str) -> Any:
    """The value at dotted ``path`` in ``record`` (integers index lists); raises :class:`TemplateError`."""
    value: Any = record
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            keys = ", ".join(sorted(map(str, record))) if isinstance(record, Mapping) else "none"
            raise TemplateError(f"field {path!r} not found in the record (its fields: {keys})")
    return value


def render(template: str, record: Mapping[str, Any]) -> str:
    """Fill every placeholder of ``template`` from ``record``."""

    def fill(match: re.Match) -> str:
        name, *filters = [part.strip() for part in match.group(1).split("|")]
        value = lookup(record, name)
        for f in filters:
            value = FILTERS[f](value)
        return str(value)

    return PLACEHOLDER.sub(fill, template)
