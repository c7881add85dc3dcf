"""The optimizers kind: registry contract, list-plugins, TOML validation with one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from typer.testing import CliRunner

from ssltk.cli import app
from ssltk.config import OptimConfig, load_config
from ssltk.engine.optim import build_optimizer, clip_gradients, cosine_schedule
from ssltk.errors import ConfigError
from ssltk.interfaces import Optimizer, TwoStepOptimizer
from ssltk.registry import get_registry

ACCEPTANCE = {"name": "sam", "base": {"name": "sgd", "momentum": 0.9}, "rho": 2.0,
              "adaptive": True, "lr": 1e-2}
"""The optimiser of issue 14's seed: SGD wrapped in adaptive SAM."""


def test_list_plugins_shows_the_built_in_optimizers():
    result = CliRunner().invoke(app, ["list-plugins", "--json", "--kind", "optimizers"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    found = {n for r in rows for n in r["components"].get("optimizers", [])}
    assert {"adamw", "sgd", "lars", "sam"} <= found
    assert all(set(r["components"]) <= {"optimizers"} for r in rows)


@pytest.mark.numerics
@pytest.mark.parametrize("name", get_registry().names("optimizers"))
def test_every_optimizer_builds_and_descends(name, registry):
    # The contract, for any registered optimiser with its default parameters: a class with a
    # Config, build() over param groups gives a torch optimiser that the engine's step drives
    # down a least-squares loss (lr 0.1, 60 steps; measured: adamw, sgd, sam end below 0.04 of
    # the first loss, LARS, whose step is lr * eta * ||w|| with eta = 0.001, at 0.973).
    klass = registry.get("optimizers", name)
    assert issubclass(klass, Optimizer) and klass.name == name
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=gen)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = build_optimizer(model, OptimConfig(name=name, lr=0.1), registry)
    assert isinstance(opt, torch.optim.Optimizer)
    assert isinstance(opt, TwoStepOptimizer) == klass.two_step
    sched = cosine_schedule(opt, total_steps=60)

    def loss():
        return ((model(x)[:, 0] - y) ** 2).mean()

    first = loss().item()
    for _ in range(60):
        opt.zero_grad()
        loss().backward()
        if klass.two_step:
            opt.first_step()
            opt.zero_grad()
            loss().backward()
        clip_gradients(model, 10.0)
        opt.step()
        sched.step()
    assert loss().item() < 0.99 * first


def test_acceptance_optimizer_validates():
    config = OptimConfig(**ACCEPTANCE)
    assert config.spec().params() == {"base": {"name": "sgd", "momentum": 0.9}, "rho": 2.0,
                                      "adaptive": True}
    opt = build_optimizer(nn.Linear(2, 2), config)
    assert type(opt.base) is torch.optim.SGD and opt.base.param_groups[0]["momentum"] == 0.9
    assert (opt.rho, opt.adaptive, opt.param_groups[0]["lr"]) == (2.0, True, 1e-2)


@pytest.mark.parametrize(("changes", "message"), [
    ({"rhoo": 2.0}, "pretrain.optimizer.rhoo: unknown key. Did you mean 'rho'?"),
    ({"base": {"name": "sgd", "momentun": 0.9}},
     "pretrain.optimizer.base.momentun: unknown key. Did you mean 'momentum'?"),
    ({"base": {"name": "sgdd"}},
     "pretrain.optimizer.base.name: unknown optimizer 'sgdd'. Did you mean 'sgd'?"),
    ({"base": {"name": "sam"}}, "pretrain.optimizer.base.name: 'sam' takes two passes itself"),
    ({"rho": -1}, "pretrain.optimizer.rho: Input should be greater than 0"),
    ({"adaptive": "yes please"}, "pretrain.optimizer.adaptive: Input should be a valid boolean"),
    ({"name": "adam"}, "pretrain.optimizer.name: unknown optimizer 'adam'. Did you mean 'adamw'?"),
    ({"name": "adamw", "momentum": 0.9, "base": None, "rho": None, "adaptive": None},
     "pretrain.optimizer.momentum: unknown key. 'momentum' is a parameter of lars, sgd, "
     "not of adamw."),
])
def test_a_typo_in_the_optimizer_is_one_line_naming_the_toml_path(changes, message, tmp_path,
                                                                   make_benchmark, registry):
    table = {k: v for k, v in {**ACCEPTANCE, **changes}.items() if v is not None}
    path = make_benchmark(tmp_path / "b.toml", tmp_path / "s.h5",
                          pretrain={"optimizer": table})
    with pytest.raises(ConfigError) as err:
        load_config(path, registry)
    text = str(err.value)
    assert text.startswith(f"{path}: {message}") and "\n" not in text
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [f"Error: {text}"]


def test_a_direct_config_is_checked_too():
    with pytest.raises(ValidationError, match="unknown optimizer 'adam'"):
        OptimConfig(name="adam")
    with pytest.raises(ValidationError, match="rhoo: unknown key"):
        OptimConfig(name="sam", rhoo=1.0)


def test_the_validation_context_registry_is_used():
    # a registry without the optimizer plugin knows no optimiser (the installed ones are not
    # consulted behind its back); one with an in-process optimiser accepts it
    bare = get_registry(disabled={"optimizers"})
    with pytest.raises(ValidationError, match="unknown optimizer 'adamw'.*is a plugin disabled"):
        OptimConfig.model_validate({"name": "adamw"}, context={"registry": bare})

    class Plain(Optimizer):
        name = "plain"

        def build(self, groups, lr):
            return torch.optim.SGD(groups, lr=lr)

    bare.add("optimizers", Plain)
    config = OptimConfig.model_validate({"name": "plain", "lr": 0.5}, context={"registry": bare})
    opt = build_optimizer(nn.Linear(2, 1), config, bare)
    assert type(opt) is torch.optim.SGD and opt.param_groups[0]["lr"] == 0.5
