"""Benchmark TOML loading and validation messages."""

from __future__ import annotations

import pytest

from ssltk.config import BenchmarkConfig, json_schema, load_config
from ssltk.errors import ConfigError

VALID = """
name = "demo"
seeds = [0, 1]

[data]
pretrain_store = "data/ukb.h5"
finetune_store = "data/adni.h5"
target = "diagnosis"
classes = ["CN", "AD"]

[backbone]
name = "resnet18"
out_dim = 256

[pretrain]
epochs = 2
objectives = [{name = "simclr"}, {name = "moco"}]

[finetune]
modes = ["frozen", "full"]
n_per_class = [10, 20]
"""


def write(tmp_path, text, name="bench.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path, registry=None) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path, registry)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_valid_config_loads_and_hashes_stably(tmp_path):
    cfg = load_config(write(tmp_path, VALID))
    assert isinstance(cfg, BenchmarkConfig)
    assert cfg.backbone.params() == {"out_dim": 256}
    reordered = VALID.replace('seeds = [0, 1]\n', '').replace('name = "demo"',
                                                               'seeds = [0, 1]\nname = "demo"')
    assert load_config(write(tmp_path, reordered, "b.toml")).content_hash() == cfg.content_hash()
    assert load_config(write(tmp_path, VALID.replace("epochs = 2", "epochs = 3"), "c.toml")
                       ).content_hash() != cfg.content_hash()


@pytest.mark.parametrize("old, new, expected", [
    ("epochs = 2", "epoch = 2", "pretrain.epoch: unknown key. Did you mean 'epochs'?"),
    ('target = "diagnosis"', 'targt = "diagnosis"',
     "data.targt: unknown key. Did you mean 'target'?"),
    ("epochs = 2", 'epochs = "two"', "pretrain.epochs: Input should be a valid integer"),
    ('modes = ["frozen", "full"]', 'modes = ["frozen", "ful"]',
     "finetune.modes[1]: Input should be 'frozen' or 'full'"),
    ("n_per_class = [10, 20]", "", "finetune: Value error, give label_fractions, n_per_class and/or n_total"),
    ('name = "demo"', "", "name: Field required"),
])
def test_structure_errors_name_file_and_field(tmp_path, old, new, expected):
    path = write(tmp_path, VALID.replace(old, new))
    assert error_of(path) == f"{path}: {expected}" or error_of(path).startswith(f"{path}: {expected}")


def test_component_params_are_checked_against_the_plugin(tmp_path, registry):
    path = write(tmp_path, VALID.replace("out_dim = 256", "out_dim = -1"))
    assert error_of(path, registry).startswith(
        f"{path}: backbone.out_dim: Input should be greater than or equal to 1")
    path = write(tmp_path, VALID.replace('name = "resnet18"', 'name = "resnet81"'))
    assert error_of(path, registry).startswith(
        f"{path}: backbone.name: unknown backbone 'resnet81'. Did you mean 'resnet18'?")


def test_toml_syntax_and_missing_file(tmp_path):
    assert "invalid TOML" in error_of(write(tmp_path, "name = \n"))
    assert error_of(tmp_path / "nope.toml").endswith("nope.toml: no such file")


def test_json_schema_describes_the_file():
    schema = json_schema()
    assert set(schema["properties"]) >= {"name", "data", "backbone", "pretrain", "finetune", "seeds"}
    assert schema["additionalProperties"] is False
