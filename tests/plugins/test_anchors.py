"""Anchors: the kernel contract for every registered anchor, then each kernel's values."""

from __future__ import annotations

import math

import pytest
import torch

from ssltk.errors import ConfigError, SsltkError
from ssltk.registry import get_registry

NAMES = get_registry().names("anchors")


def example(registry, name):
    """The anchor built from its Config's first documented example (``json_schema_extra``)."""
    cls = registry.get("anchors", name)
    examples = (cls.Config.model_config.get("json_schema_extra") or {}).get("examples") or [{}]
    try:
        return registry.create("anchors", name, examples[0])
    except ConfigError as exc:
        pytest.skip(f"{name} has no example config: {exc}")


def meta_for(columns, n=6, device="cpu"):
    """Integer-valued columns: valid both as continuous values and as category codes."""
    g = torch.Generator().manual_seed(0)
    return {c: torch.randint(0, 3, (n,), generator=g).float().to(device) for c in columns}


@pytest.mark.parametrize("name", NAMES)
def test_contract_kernel(registry, name):
    anchor = example(registry, name)
    assert anchor.columns and all(isinstance(c, str) for c in anchor.columns)
    k = anchor(meta_for(anchor.columns))
    assert k.shape == (6, 6) and k.dtype == torch.float32
    torch.testing.assert_close(k, k.T)
    assert (k >= 0).all() and (k <= 1).all()
    torch.testing.assert_close(torch.diagonal(k), torch.ones(6))


@pytest.mark.parametrize("name", NAMES)
def test_contract_missing_column_is_one_line_error(registry, name):
    anchor = example(registry, name)
    with pytest.raises(SsltkError, match="needs metadata column") as exc:
        anchor({"unrelated": torch.zeros(3)})
    assert "\n" not in str(exc.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
@pytest.mark.parametrize("name", NAMES)
def test_contract_device(registry, name):
    anchor = example(registry, name)
    assert anchor(meta_for(anchor.columns, device="cuda")).device.type == "cuda"


def test_rbf_hand_computed(registry):
    k = registry.create("anchors", "rbf", {"columns": ["age"], "sigma": 5.0})
    out = k({"age": torch.tensor([60.0, 65.0, 75.0])})
    expected = torch.tensor([
        [1, math.exp(-25 / 50), math.exp(-225 / 50)],
        [math.exp(-25 / 50), 1, math.exp(-100 / 50)],
        [math.exp(-225 / 50), math.exp(-100 / 50), 1],
    ], dtype=torch.float32)
    torch.testing.assert_close(out, expected)


def test_rbf_several_columns_per_column_sigma(registry):
    k = registry.create("anchors", "rbf", {"columns": ["age", "bmi"], "sigma": [5.0, 2.0]})
    out = k({"age": torch.tensor([60.0, 70.0]), "bmi": torch.tensor([20.0, 23.0])})
    value = math.exp(-(100 / (2 * 25) + 9 / (2 * 4)))
    torch.testing.assert_close(out[0, 1], torch.tensor(value, dtype=torch.float32))


def test_rbf_config_checks(registry):
    with pytest.raises(ConfigError, match="sigma has 1 values for 2 columns"):
        registry.config("anchors", "rbf", {"columns": ["a", "b"], "sigma": [1.0]})
    with pytest.raises(ConfigError, match="sigma must be > 0"):
        registry.config("anchors", "rbf", {"columns": ["a"], "sigma": 0})


def test_categorical_values(registry):
    k = registry.create("anchors", "categorical", {"column": "site", "off_value": 0.25})
    out = k({"site": torch.tensor([0, 1, 0])})
    torch.testing.assert_close(out, torch.tensor([[1, .25, 1], [.25, 1, .25], [1, .25, 1]]))


def test_missing_error_names_column_and_count(registry):
    rbf = registry.create("anchors", "rbf", {"columns": ["age"]})
    with pytest.raises(SsltkError, match=r"column 'age' has 2 missing value\(s\)"):
        rbf({"age": torch.tensor([60.0, float("nan"), 70.0, float("nan")])})
    cat = registry.create("anchors", "categorical", {"column": "sex"})
    with pytest.raises(SsltkError, match=r"column 'sex' has 1 missing"):
        cat({"sex": torch.tensor([0, -1, 1])})


def test_missing_neutral(registry):
    rbf = registry.create("anchors", "rbf", {"columns": ["age"], "missing": "neutral"})
    out = rbf({"age": torch.tensor([60.0, float("nan"), 60.0])})
    torch.testing.assert_close(out, torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1]]))
    cat = registry.create("anchors", "categorical", {"column": "sex", "missing": "neutral"})
    out = cat({"sex": torch.tensor([-1, -1, 1])})
    # two missing values are not "the same category"
    torch.testing.assert_close(out, torch.eye(3))


def test_combined_product_and_weighted_sum(registry):
    children = [{"name": "rbf", "columns": ["age"], "sigma": 5.0},
                {"name": "categorical", "column": "sex"}]
    meta = {"age": torch.tensor([60.0, 65.0, 65.0]), "sex": torch.tensor([0, 0, 1])}
    rbf = math.exp(-0.5)
    prod = registry.create("anchors", "combined", {"anchors": children})
    assert prod.columns == ("age", "sex")
    torch.testing.assert_close(prod(meta)[0, 1], torch.tensor(rbf, dtype=torch.float32))
    torch.testing.assert_close(prod(meta)[1, 2], torch.tensor(0.0))
    mix = registry.create("anchors", "combined",
                          {"anchors": children, "mode": "weighted_sum", "weights": [3, 1]})
    torch.testing.assert_close(mix(meta)[1, 2], torch.tensor(0.75))
    torch.testing.assert_close(mix(meta)[0, 1], torch.tensor(0.75 * rbf + 0.25))


def test_combined_validates_children(registry):
    with pytest.raises(ConfigError, match=r"anchors\[0\].name must be one of"):
        registry.config("anchors", "combined", {"anchors": [{"name": "nope"}]})
    with pytest.raises(ConfigError, match="unknown key|extra"):
        registry.config("anchors", "combined", {"anchors": [{"name": "rbf", "columns": ["a"],
                                                             "sigmaa": 1}]})
    with pytest.raises(ConfigError, match="one value >= 0 per anchor"):
        registry.config("anchors", "combined", {"anchors": [{"name": "categorical",
                                                             "column": "a"}], "weights": [1, 2]})
