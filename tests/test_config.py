"""The typed config: presets, dotted overrides, YAML files, and errors that name the field."""

import pytest

from glam.config import ConfigError, GLaMConfig, SourceConfig, load_yaml, resolve
from glam.config.presets import PRESETS, get_preset


def test_every_preset_builds_and_round_trips_through_yaml(tmp_path):
    for name in PRESETS:
        cfg = get_preset(name)
        path = tmp_path / f"{name}.yaml"
        path.write_text(cfg.to_yaml())
        assert load_yaml(str(path)) == cfg


def test_overrides_are_typed_and_applied_together():
    cfg = resolve("tiny", ["train.steps=7", "optim.lr_scale=0.25", "model.scan_layers=false", "moe.dispatch=einsum"])
    assert (cfg.train.steps, cfg.optim.lr_scale, cfg.model.scan_layers, cfg.moe.dispatch) == (7, 0.25, False, "einsum")
    # Validation sees the final values, whatever the order of the overrides.
    cfg = resolve("tiny", ["mesh.process_id=1", "mesh.num_processes=2", "mesh.coordinator_address=host0:1234"])
    assert (cfg.mesh.num_processes, cfg.mesh.process_id) == (2, 1)


def test_yaml_with_preset_and_sources(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        "preset: tiny\ntrain:\n  steps: 11\ndata:\n  sources:\n"
        "    - {name: web, path: 'web/*.jsonl', weight: 0.7}\n    - {name: books, path: books.txt, weight: 0.3}\n"
    )
    cfg = resolve(str(path), ["train.batch_size=8"])
    assert cfg.name == "tiny" and cfg.train.steps == 11 and cfg.train.batch_size == 8
    assert cfg.data.sources == (SourceConfig("web", "web/*.jsonl", 0.7), SourceConfig("books", "books.txt", 0.3))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["train.stepz=3"], "train.stepz: unknown key; valid keys under 'train.'"),
        (["trian.steps=3"], "trian: unknown key"),
        (["train.steps=3.5"], "train.steps: expected an integer, got '3.5'"),
        (["model.scan_layers=maybe"], "model.scan_layers: expected true or false"),
        (["model.remat=some"], "model.remat: got 'some'; choose one of"),
        (["model.num_layers=5"], "model.num_layers: got 5; GLaM stacks (MoE, dense) pairs"),
        (["train"], "write overrides as section.field=value"),
        (["train=1"], "train: is a section"),
        (["train.batch_size=6", "train.grad_accum=4"], "train.grad_accum: must divide train.batch_size=6"),
        (["train.seq_len=512"], "train.seq_len: 512 exceeds model.max_seq_len=256"),
        (["moe.group_size=100"], "moe.group_size: 100 must divide the tokens per micro-batch"),
        (["mesh.num_processes=2"], "mesh.coordinator_address: set it"),
    ],
)
def test_mistakes_name_the_field_and_the_fix(overrides, message):
    with pytest.raises(ConfigError) as exc:
        resolve("tiny", overrides)
    assert message in str(exc.value)


@pytest.mark.parametrize(
    "field,value",
    [
        ("capacity_factor_train", -1.0),
        ("capacity_factor_eval", 0.0),
        ("capacity_multiple", 0),
        ("group_size", -3),
        ("second_expert_threshold", 0.0),
        ("second_expert_threshold", 1.5),
        ("aux_loss_weight", -5.0),
        ("expert_dim", -1),
    ],
)
def test_each_moe_number_is_checked_when_built(field, value):
    """Each bad value is one line naming its field (these checks once sat after a ``return``, unrun)."""
    from glam.config import MoEConfig

    with pytest.raises(ConfigError) as exc:
        MoEConfig(**{field: value})
    message = str(exc.value)
    assert message.startswith(f"moe.{field}: got {value!r}; must be") and "\n" not in message
    with pytest.raises(ConfigError, match=rf"^moe\.{field}: got"):
        resolve("tiny", [f"moe.{field}={value}"])


def test_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        resolve(str(bad))
    weight = tmp_path / "weight.yaml"
    weight.write_text("data:\n  sources:\n    - {name: a, path: a.txt, weight: 0}\n")
    with pytest.raises(ConfigError, match=r"data.sources\[a\].weight: got 0.0; mixture weights must be > 0"):
        resolve(str(weight))


def test_config_is_frozen_and_hashable():
    cfg = GLaMConfig()
    with pytest.raises(AttributeError):
        cfg.train.steps = 3  # type: ignore[misc]
    # equal configs are one dict key (a cache keyed by config), a changed field another
    tiny, steps7 = resolve("tiny"), resolve("tiny", ["train.steps=7"])
    table = {cfg: "default", tiny: "tiny", steps7: "steps7"}
    assert len(table) == 3 and table[GLaMConfig()] == "default" and table[resolve("tiny")] == "tiny"
    assert table[resolve("tiny", ["train.steps=7"])] == "steps7" and hash(tiny) != hash(steps7)


def test_each_enumeration_is_declared_once_and_its_registry_follows_it():
    """The config's Literal is the one list of names; each registry that implements them has exactly those."""
    from glam.config import ModelConfig, MoEConfig, choices
    from glam.errors import ConfigError
    from glam.model.moe.dispatch import DISPATCH
    from glam.model.moe.layer import EXPERT_FORMS
    from glam.model.transformer import REMAT_POLICIES

    assert tuple(DISPATCH) == choices(MoEConfig, "dispatch")
    assert tuple(EXPERT_FORMS) == choices(ModelConfig, "expert_activation")
    assert tuple(REMAT_POLICIES) == choices(ModelConfig, "remat")
    with pytest.raises(ConfigError, match=r"moe\.dispatch: got 'bogus'; choose one of 'einsum', 'index', 'dropless'"):
        MoEConfig(dispatch="bogus")  # built in code, not parsed: still checked
