"""One typed, frozen, nested configuration for every glam job.

``glam.config.sections``: the sections (``model``, ``moe``, ``mesh``, ``data``, ``optim``, ``train``,
``checkpoint``, ``eval``) and :class:`GLaMConfig`, each checked when built. ``glam.config.presets``:
the paper's Table 4 rows and the CPU presets. ``glam.config.build``: a config from a preset, a YAML
file and dotted ``key=value`` overrides. Both are re-exported here, the
public surface every caller imports (``from glam.config import GLaMConfig, resolve``).
"""

from glam.config.build import (
    apply_overrides,
    from_dict,
    load_yaml,
    merge_dict,
    parse_override,
    read_config_mapping,
    resolve,
)
from glam.config.sections import (
    SOURCE_FORMATS,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    GLaMConfig,
    MeshConfig,
    ModelConfig,
    MoEConfig,
    OptimConfig,
    SourceConfig,
    TrainConfig,
    choices,
)
from glam.errors import ConfigError

__all__ = [
    "SOURCE_FORMATS",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "GLaMConfig",
    "MeshConfig",
    "ModelConfig",
    "MoEConfig",
    "OptimConfig",
    "SourceConfig",
    "TrainConfig",
    "apply_overrides",
    "choices",
    "from_dict",
    "load_yaml",
    "merge_dict",
    "parse_override",
    "read_config_mapping",
    "resolve",
]
