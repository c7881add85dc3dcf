"""The example third-party plugin (plugins/examples/ssltk-barlow), installed for real.

If the distribution ``ssltk-barlow`` is not installed yet (CI installs it up front), the module
fixture installs it into this interpreter's environment with
``pip install --no-deps --no-build-isolation -e plugins/examples/ssltk-barlow`` (offline: the
build backend is the environment's setuptools). Then the plugin must behave exactly like a
built-in: listed by ``ssltk list-plugins``, disabled by name, validated in a TOML, created and
trained by name, with a loss that matches the paper's formula computed independently.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tiny import backbone, make_batch, pretrain_steps, tiny_volumes
from typer.testing import CliRunner

from ssltk.cli import app
from ssltk.config import load_config
from ssltk.errors import ConfigError
from ssltk.registry import get_registry

pytestmark = pytest.mark.numerics

PLUGIN_DIR = Path(__file__).resolve().parents[2] / "plugins" / "examples" / "ssltk-barlow"
INSTALL = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
           "-e", str(PLUGIN_DIR)]


@pytest.fixture(scope="module", autouse=True)
def installed():
    """Install ssltk-barlow unless it is; make it importable in this already-running process."""
    try:
        importlib.metadata.distribution("ssltk-barlow")
    except importlib.metadata.PackageNotFoundError:
        done = subprocess.run(INSTALL, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(INSTALL)} failed:\n{done.stdout}\n{done.stderr}")
        importlib.invalidate_caches()
    try:
        importlib.import_module("ssltk_barlow")
    except ImportError:  # the editable install's .pth hook only runs at interpreter start-up
        sys.path.insert(0, str(PLUGIN_DIR))
        importlib.invalidate_caches()


def list_plugins(*args: str, env: dict[str, str] | None = None) -> dict[str, dict]:
    result = CliRunner().invoke(app, [*args, "list-plugins", "--json"], env=env)
    assert result.exit_code == 0, result.output
    return {row["name"]: row for row in json.loads(result.output)}


def test_listed_with_its_distribution():
    row = list_plugins()["barlow"]
    assert row["distribution"] == "ssltk-barlow" and row["version"] == "0.1.0"
    assert row["status"] == "ok", row["error"]
    assert row["components"] == {"objectives": ["barlow"]}
    assert "register_objectives" in row["hooks"]


def test_disabled_by_option_or_environment():
    assert list_plugins("--disable-plugin", "barlow")["barlow"]["status"] == "disabled"
    env = {"SSLTK_DISABLE_PLUGINS": "barlow"}
    assert list_plugins(env=env)["barlow"]["status"] == "disabled"
    with pytest.raises(ConfigError, match="unknown objective 'barlow'"):
        get_registry(disabled={"barlow"}).get("objectives", "barlow")


TOML = """
name = "barlow-vs-simclr"
seeds = [0]
[data]
pretrain_store = "pretrain.h5"
finetune_store = "finetune.h5"
target = "diagnosis"
[backbone]
name = "resnet18"
[pretrain]
objectives = [{{name = "simclr"}}, {{name = "barlow", {barlow}}}]
[finetune]
n_per_class = [10]
"""


def test_used_by_name_in_a_toml(tmp_path):
    registry = get_registry()
    path = tmp_path / "bench.toml"
    path.write_text(TOML.format(barlow="lambd = 0.01, projector_dims = [512, 512]"))
    config = load_config(path, registry)
    assert config.pretrain.objectives[1].name == "barlow"
    path.write_text(TOML.format(barlow="lamda = 0.01"))
    with pytest.raises(ConfigError, match=r"pretrain\.objectives\[1\]\.lamda: unknown key"):
        load_config(path, registry)


def test_trains_by_name_like_a_builtin():
    registry = get_registry()
    barlow = next(p for p in registry.plugins if p.name == "barlow")
    assert barlow.components == {"objectives": ["barlow"]}
    torch.manual_seed(0)
    objective = registry.create("objectives", "barlow", {"projector_dims": [128, 128, 128]},
                                backbone=backbone(registry, 3), registry=registry)
    assert type(objective).__module__.startswith("ssltk_barlow")
    losses = pretrain_steps(objective, tiny_volumes(4), {}, steps=15, lr=2e-3)
    assert sum(losses[-4:]) < sum(losses[:4])


def plain_barlow_twins(z1: list[list[float]], z2: list[list[float]], lambd: float,
                       eps: float = 1e-5) -> float:
    """Zbontar et al. (ICML 2021) eq. (1)-(2), written with loops over samples and features."""
    n, d = len(z1), len(z1[0])

    def column(z, i):
        values = [z[b][i] for b in range(n)]
        mean = sum(values) / n
        std = (sum((v - mean) ** 2 for v in values) / n + eps) ** 0.5
        return [(v - mean) / std for v in values]

    a = [column(z1, i) for i in range(d)]
    b = [column(z2, j) for j in range(d)]
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[i][k] * b[j][k] for k in range(n)) / n
            loss += (1.0 - c_ij) ** 2 if i == j else lambd * c_ij**2
    return loss


def test_loss_matches_an_independent_plain_loop():
    registry = get_registry()
    torch.manual_seed(0)
    objective = registry.create("objectives", "barlow",
                                {"projector_dims": [16, 12], "lambd": 0.02},
                                backbone=backbone(registry, 2), registry=registry)
    batch = make_batch(objective, tiny_volumes(6, 2, 32), {}, torch.Generator().manual_seed(0))
    objective.train()
    loss = objective(batch).loss.item()
    with torch.no_grad():  # same modules, same (training-mode) batch statistics
        z1, z2 = (objective.projector(objective.backbone(v)).double().tolist()
                  for v in batch.views)
    assert loss == pytest.approx(plain_barlow_twins(z1, z2, 0.02), rel=1e-4)
