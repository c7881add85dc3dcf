"""Registry lookups, did-you-mean errors and parameter validation."""

from __future__ import annotations

import pytest

from ssltk.errors import ConfigError
from ssltk.interfaces import Augmentation, AugmentationConfig
from ssltk.registry import Registry


def test_unknown_name_suggests_the_closest(registry):
    with pytest.raises(ConfigError) as err:
        registry.get("backbones", "resnet81")
    msg = str(err.value)
    assert msg.startswith("unknown backbone 'resnet81'. Did you mean 'resnet18'? Available: ")
    assert "densenet121, resnet10, resnet18, resnet34, resnet50" in msg


def test_no_suggestion_when_nothing_is_close(registry):
    msg = str(pytest.raises(ConfigError, registry.get, "backbones", "vit").value)
    assert "Did you mean" not in msg and msg.startswith("unknown backbone 'vit'. Available:")


def test_names_filter_with_fnmatch(registry):
    assert registry.names("backbones", "resnet*") == ["resnet10", "resnet18", "resnet34",
                                                      "resnet50"]
    with pytest.raises(ValueError, match="unknown kind"):
        registry.names("losses")


def test_config_errors_name_the_field_path(registry):
    with pytest.raises(ConfigError) as err:
        registry.config("backbones", "resnet18", {"out_dim": "big"}, path="backbone")
    assert str(err.value).startswith("backbone.out_dim: Input should be a valid integer")
    with pytest.raises(ConfigError) as err:
        registry.config("backbones", "resnet18", {"widen": 2}, path="backbone")
    assert str(err.value).startswith("backbone.widen: unknown key. Did you mean 'widen_factor'?")


def test_create_builds_with_validated_config(registry):
    net = registry.create("backbones", "resnet10", {"out_dim": 8}, in_channels=2, spatial_dims=2)
    assert net.out_dim == 8 and net.config.out_dim == 8


def test_add_registers_in_process_and_rejects_duplicates():
    class Noop(Augmentation):
        name = "noop"
        Config = AugmentationConfig

        def __call__(self, x, generator):
            return x

    registry = Registry()
    registry.add("augmentations", Noop)
    assert registry.names("augmentations") == ["noop"]
    with pytest.raises(Exception, match="already registered"):
        registry.add("augmentations", Noop)
