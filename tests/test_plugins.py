"""Plugin discovery, isolation of broken plugins, disabling and duplicate names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from ssltk.errors import ConfigError
from ssltk.plugins import DISABLE_ENV, get_plugin_manager
from ssltk.registry import get_registry

BUILTINS = {"backbones", "augmentations", "anchors", "simclr", "moco", "genesis", "yaware",
            "multitask", "supervised"}

GOOD_PLUGIN = '''
import torch
from ssltk import hookimpl
from ssltk.interfaces import Augmentation, AugmentationConfig

class Invert(Augmentation):
    name = "{name}"
    Config = AugmentationConfig
    def __call__(self, x, generator):
        return 1 - x

@hookimpl
def register_augmentations(register):
    register(Invert)
'''


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def info(registry, name):
    return next(p for p in registry.plugins if p.name == name)


def test_builtins_are_discovered_through_entry_points(registry):
    names = {p.name for p in registry.plugins}
    assert BUILTINS <= names
    backbones = info(registry, "backbones")
    assert backbones.distribution == "ssltk" and backbones.version
    assert backbones.status == "ok" and backbones.hooks == ["register_backbones"]
    assert set(backbones.components["backbones"]) >= {"resnet10", "resnet18", "densenet121"}


def test_third_party_plugin_registers_like_a_builtin(plugin_path, make_distribution):
    mod, aug = unique("ssltk_invert"), unique("invert")
    make_distribution(plugin_path, "ssltk-invert", mod, GOOD_PLUGIN.format(name=aug), "invert")
    registry = get_registry()
    plugin = info(registry, "invert")
    assert (plugin.distribution, plugin.version, plugin.status) == ("ssltk-invert", "1.0", "ok")
    assert plugin.components == {"augmentations": [aug]}
    op = registry.create("augmentations", aug, {"p": 1.0})
    import torch
    assert torch.equal(op(torch.zeros(1, 1, 2, 2), torch.Generator()), torch.ones(1, 1, 2, 2))


@pytest.mark.parametrize("code, expected", [
    ("raise ImportError('needs libfoo: pip install foo')", "ImportError: needs libfoo"),
    ("import ssltk_no_such_module_xyz", "ModuleNotFoundError"),
    ("from ssltk import hookimpl\n@hookimpl\ndef register_objectvs(register):\n    pass\n",
     "register_objectvs"),
    ("from ssltk import hookimpl\n@hookimpl\ndef register_backbones(register):\n"
     "    raise RuntimeError('boom')\n", "RuntimeError: boom"),
    ("from ssltk import hookimpl\n@hookimpl\ndef register_backbones(register):\n"
     "    register(int)\n", "is not a Backbone"),
])
def test_a_broken_plugin_is_isolated_and_reported(plugin_path, make_distribution, code, expected):
    mod = unique("ssltk_broken")
    make_distribution(plugin_path, "ssltk-broken", mod, code, "broken")
    registry = get_registry()
    broken = info(registry, "broken")
    assert broken.status == "broken"
    assert expected in broken.error and "\n" not in broken.error
    assert all(info(registry, n).status == "ok" for n in BUILTINS)
    assert "resnet18" in registry.names("backbones")


def test_a_duplicate_name_is_rejected_and_the_first_plugin_kept(plugin_path, make_distribution):
    code = GOOD_PLUGIN.format(name="flip_dup") + '''
from ssltk.interfaces import Backbone
class Fake(Backbone):
    name = "resnet18"
    def forward(self, x): return x
    def forward_features(self, x): return [x]
@hookimpl
def register_backbones(register):
    register(Fake)
'''
    make_distribution(plugin_path, "ssltk-dup", unique("ssltk_dup"), code, "dup")
    registry = get_registry()
    dup = info(registry, "dup")
    assert dup.status == "broken"
    assert "backbone 'resnet18' is already registered by plugin 'backbones'" in dup.error
    assert "resnet18" in info(registry, "backbones").components["backbones"]
    assert registry.get("backbones", "resnet18").__module__.startswith("ssltk_backbones")
    assert "flip_dup" not in registry.names("augmentations")  # nothing of a rejected plugin


def test_plugins_can_be_disabled(monkeypatch):
    registry = get_registry(disabled={"backbones"})
    assert info(registry, "backbones").status == "disabled"
    assert registry.names("backbones") == []
    with pytest.raises(ConfigError, match="is a plugin disabled or broken"):
        registry.get("backbones", "resnet18")
    monkeypatch.setenv(DISABLE_ENV, "backbones, simclr")
    registry = get_registry()
    assert {p.name for p in registry.plugins if p.status == "disabled"} == {"backbones", "simclr"}


def test_plugin_manager_is_fresh_each_time():
    assert get_plugin_manager() is not get_plugin_manager()
    assert get_plugin_manager().get_plugins() == set()


@pytest.mark.slow
def test_cli_lists_a_broken_plugin_and_exits_zero(tmp_path, make_distribution):
    """End to end in a subprocess: the broken distribution is found on PYTHONPATH."""
    make_distribution(tmp_path, "ssltk-broken", unique("ssltk_broken"),
                       "raise ImportError('needs libfoo')", "broken")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "ssltk", "list-plugins", "--json"],
                         capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["broken"]["status"] == "broken"
    assert rows["broken"]["error"] == "ImportError: needs libfoo"
    assert rows["backbones"]["status"] == "ok"
