"""Hardware profiles for the step-time estimate: one small YAML file per accelerator, with its sources.

The built-in profiles live beside this module (``glam/plan/hardware/*.yaml``); ``--hardware`` takes one
of their names or the path of a file of the same form. Fields (SI units, per device):

    name                  a short name
    peak_flops            peak dense bf16 FLOP/s
    hbm_bytes             HBM capacity
    hbm_bandwidth         HBM bytes/s
    link_bandwidth        bytes/s of one interconnect link, one direction
    links_per_collective  links one device drives in a collective (2: a bidirectional ring on a torus)
    devices_per_node      devices on the fast fabric (0: all of them, as on a TPU slice)
    inter_node_bandwidth  bytes/s per device between nodes (used when a group spans more than a node)
    topology              the assumption, in words
    sources               where the figures come from
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from glam.errors import GLaMError
from glam.files import load_yaml_file

DIRECTORY = Path(__file__).with_name("hardware")
NUMBERS = ("peak_flops", "hbm_bytes", "hbm_bandwidth", "link_bandwidth", "links_per_collective")
OPTIONAL = ("devices_per_node", "inter_node_bandwidth")


@dataclass(frozen=True)
class Hardware:
    name: str
    peak_flops: float
    hbm_bytes: float
    hbm_bandwidth: float
    link_bandwidth: float
    links_per_collective: float
    devices_per_node: int
    inter_node_bandwidth: float
    topology: str
    sources: tuple[str, ...]

    def collective_bandwidth(self, group: int) -> float:
        """Bytes/s one device sends at in a collective over ``group`` devices (the topology assumption)."""
        if self.devices_per_node and group > self.devices_per_node:
            return self.inter_node_bandwidth
        return self.link_bandwidth * self.links_per_collective


def builtin_names() -> list[str]:
    return sorted(p.stem for p in DIRECTORY.glob("*.yaml"))


def from_dict(d: object, where: str) -> Hardware:
    """A profile from parsed YAML; one-line :class:`GLaMError` naming the field and the fix."""
    if not isinstance(d, dict):
        raise GLaMError(
            f"{where}: a hardware profile is a YAML mapping with {', '.join(NUMBERS)}; see glam/plan/hardware"
        )
    unknown = sorted(set(d) - set(NUMBERS) - set(OPTIONAL) - {"name", "topology", "sources"})
    if unknown:
        raise GLaMError(
            f"{where}: unknown field {unknown[0]!r}; valid fields are name, {', '.join(NUMBERS + OPTIONAL)}"
        )
    values = {}
    for key in NUMBERS + OPTIONAL:
        if key not in d:
            if key in OPTIONAL:
                values[key] = 0.0
                continue
            raise GLaMError(f"{where}: missing {key!r}; add it (a positive number, SI units per device)")
        values[key] = _number(d[key], key, where)
        if values[key] < 0 or (key in NUMBERS and values[key] == 0):
            raise GLaMError(f"{where}: {key}={d[key]!r} must be positive")
        if key == "devices_per_node" and values[key] != int(values[key]):
            raise GLaMError(f"{where}: devices_per_node={d[key]!r} must be a whole number of devices (0: all)")
    if values["devices_per_node"] and not values["inter_node_bandwidth"]:
        raise GLaMError(f"{where}: devices_per_node is set, so inter_node_bandwidth is needed (bytes/s per device)")
    sources = d.get("sources") or ()
    return Hardware(
        name=str(d.get("name") or where),
        devices_per_node=int(values.pop("devices_per_node")),
        topology=str(d.get("topology", "")),
        sources=tuple(str(s) for s in (sources if isinstance(sources, list) else [sources])),
        **values,
    )


# YAML 1.1 (PyYAML) reads 275e12, without a dot, as a string: that one form of a number is taken.
_EXPONENT = re.compile(r"[0-9]+(\.[0-9]*)?[eE][+-]?[0-9]+")


def _number(value: object, key: str, where: str) -> float:
    """A finite number from a profile: never a boolean (``true`` is not 1), a word, NaN or infinity."""
    if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GLaMError(f"{where}: {key}={value!r} is not a number; write it as e.g. 275.0e12")
    if not math.isfinite(value):
        raise GLaMError(f"{where}: {key}={value!r} is not a finite number; write the figure, e.g. 275.0e12")
    return float(value)


def load(name_or_path: str) -> Hardware:
    """A built-in profile by name (``tpu-v4``) or a YAML file of the same form."""
    path = DIRECTORY / f"{name_or_path}.yaml"
    if not path.is_file():
        path = Path(name_or_path)
        if not path.is_file():
            raise GLaMError(
                f"--hardware {name_or_path!r}: no such profile or file; use one of {', '.join(builtin_names())} "
                "or the path of a YAML profile"
            )
    # glam's strict YAML (glam.files): UTF-8, and a key given twice is refused, never the last one taken
    return from_dict(load_yaml_file(str(path), "--hardware profile", GLaMError), str(path))
