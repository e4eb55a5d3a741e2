"""Building a config from text: a preset, a YAML file and dotted ``key=value`` overrides (glam.config).

Values are coerced to each field's annotated type (a ``Literal`` to one of its options); every
mistake is one :class:`ConfigError` naming the field and the fix.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
import warnings
from typing import Any, Literal

from glam.config.presets import get_preset
from glam.config.sections import GLaMConfig
from glam.errors import ConfigError, GLaMWarning
from glam.files import load_yaml_file, parse_yaml


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a command line string) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        options = typing.get_args(tp)
        if isinstance(value, str) and not isinstance(options[0], str):
            value = parse_yaml(value, where)
        if value not in options:
            raise ConfigError(f"{where}: got {value!r}; choose one of {', '.join(map(repr, options))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(value, args[0], where)
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if isinstance(value, str):
            value = parse_yaml(value, where)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
            except ValueError:
                f = None
            if f is not None and f.is_integer():
                return int(f)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.replace("_", ""))
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{where}: got {value!r}; give a finite number")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _field_values(cls: type, values: dict, where: str, current: Any = None) -> dict:
    """``values`` checked against ``cls``'s fields and coerced to their types: the one reader of a nested
    mapping, for a section built from scratch (``current`` None) or replacing fields of ``current``."""
    names = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            scope = f"under '{where}.'" if where else "at the top level"
            raise ConfigError(f"{path}: unknown key; valid keys {scope} are {', '.join(sorted(names))}")
        inner = getattr(current, key) if current is not None else None
        if dataclasses.is_dataclass(inner):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: is a section; set one of its fields, e.g. {path}.<field>=...")
            out[key] = _replace_nested(inner, value, path)
        else:
            out[key] = _coerce(value, hints[key], path)
    return out


def from_dict(cls: type, values: dict, where: str = "") -> Any:
    """Build dataclass ``cls`` from a (possibly partial) nested dict, checking keys and types."""
    kwargs = _field_values(cls, values, where)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def parse_override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r}: write overrides as section.field=value, e.g. train.steps=100")
    return key.strip(), value.strip()


def _nest(path: str, value: Any) -> dict:
    head, _, rest = path.partition(".")
    return {head: _nest(rest, value) if rest else value}


def _deep_update(into: dict, new: dict) -> dict:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_update(into[key], value)
        else:
            into[key] = value
    return into


def _replace_nested(obj: Any, values: dict, where: str = "") -> Any:
    """``obj`` with every field in the nested ``values`` replaced at once, so a section is validated
    only after all of its changes (e.g. mesh.num_processes together with mesh.coordinator_address)."""
    return dataclasses.replace(obj, **_field_values(type(obj), values, where, current=obj))


def apply_overrides(cfg: GLaMConfig, overrides: list[str] | tuple[str, ...]) -> GLaMConfig:
    """Apply dotted ``key=value`` overrides together; validation sees the final values.

    A key given twice (or a section and a field inside it) is applied in order, the last one winning,
    with a :class:`GLaMWarning` naming both: a list of overrides composed by a script may repeat a
    key on purpose, but on a command line it is usually a mistake worth hearing about.
    """
    values: dict = {}
    given: dict[str, str] = {}
    for item in overrides:
        key, value = parse_override(item)
        for other in given:
            if key == other or key.startswith(f"{other}.") or other.startswith(f"{key}."):
                warnings.warn(
                    f"{key}: overridden twice ({given[other]!r}, then {item!r}); the last one applies",
                    GLaMWarning,
                    stacklevel=2,
                )
        given[key] = item
        _deep_update(values, _nest(key, value))
    return _replace_nested(cfg, values)


def merge_dict(cfg: GLaMConfig, values: dict) -> GLaMConfig:
    """Apply a nested dict (e.g. from YAML) on top of ``cfg``."""
    return _replace_nested(cfg, values)


def read_config_mapping(path: str, what: str = "config file") -> dict:
    """The mapping a YAML config file holds: strict YAML (glam.files), not empty, not a list."""
    values = load_yaml_file(path, what)
    if values is None:
        raise ConfigError(f"{what} {path!r} is empty; name a preset (preset: tiny) and the sections to change")
    if not isinstance(values, dict):
        raise ConfigError(
            f"{what} {path!r} holds a {type(values).__name__}, not a mapping of sections (preset:, model:, train:, ...)"
        )
    return values


def load_yaml(path: str, base: GLaMConfig | None = None) -> GLaMConfig:
    """Load a YAML config. It may name a ``preset:`` to start from; other keys override it."""
    values = read_config_mapping(path)
    preset = values.pop("preset", None)
    if preset is not None and not isinstance(preset, str):
        raise ConfigError(f"config file {path!r}: preset: expected a preset name, got {preset!r}; write preset: tiny")
    cfg = get_preset(preset) if preset else (base or GLaMConfig())
    return merge_dict(cfg, values)


def resolve(spec: str | None, overrides: list[str] | tuple[str, ...] = ()) -> GLaMConfig:
    """A preset name or a YAML path, plus dotted overrides → a validated config."""
    if spec is None:
        cfg = get_preset("tiny")
    elif spec.endswith((".yaml", ".yml")):
        cfg = load_yaml(spec)
    else:
        cfg = get_preset(spec)
    return apply_overrides(cfg, list(overrides))
