"""Metadata similarity kernels: continuous RBF, categorical, and combinations of them.

Dufumier et al., "Contrastive Learning with Continuous Proxy Meta-Data for 3D MRI
Classification" (y-Aware), MICCAI 2021: an RBF kernel on age weights positive pairs. Any
objective that weights pairs can use these kernels. Every kernel maps ``meta`` (column ->
``(B,)`` tensor; continuous missing = NaN, categorical missing = -1) to a symmetric ``(B, B)``
float32 tensor in [0, 1] with ones on the diagonal, on the metadata's device.

Missing values (``missing``): ``"error"`` (default) raises a one-line SsltkError naming the
column and the count; ``"neutral"`` gives every pair that involves a missing value similarity 0
off the diagonal (the diagonal stays 1): with no information, a pair falls back to what the
objective does without an anchor (a plain negative for y-Aware/SimCLR-style losses) instead of
being silently treated as "same value" (a NaN/-1 read as 0 would make unrelated subjects similar).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import ConfigDict, Field, model_validator
from torch import Tensor

from ssltk.errors import SsltkError
from ssltk.interfaces import Anchor, ComponentConfig

Missing = Literal["error", "neutral"]
MISSING_HELP = ('"error": raise if a value is missing; "neutral": a pair with a missing value '
                "gets similarity 0 (diagonal stays 1).")


def column(meta: dict[str, Tensor], name: str, anchor: str) -> Tensor:
    """``meta[name]`` as a 1-D tensor, or a one-line error listing the available columns."""
    if name not in meta:
        have = ", ".join(sorted(meta)) or "none"
        raise SsltkError(f"anchor '{anchor}' needs metadata column '{name}'; batch has: {have}")
    return meta[name].reshape(-1)


def finish(sim: Tensor, missing: Tensor, policy: str, anchor: str, col: str) -> Tensor:
    """Apply the missing-value policy to a ``(B, B)`` float64 kernel; float32 with diagonal 1."""
    n_missing = int(missing.sum())
    if n_missing and policy == "error":
        raise SsltkError(
            f"anchor '{anchor}': column '{col}' has {n_missing} missing value(s) in this batch; "
            f"drop those subjects or set missing = \"neutral\"")
    pair_missing = missing[:, None] | missing[None, :]
    sim = torch.where(pair_missing, torch.zeros_like(sim), sim)
    sim.fill_diagonal_(1.0)
    return sim.clamp(0, 1).float()


class RBFAnchor(Anchor):
    """``k(a, b) = exp(-sum_c (y_ac - y_bc)^2 / (2 sigma_c^2))`` over continuous columns.

    ``sigma`` is in each column's unit (y-Aware uses sigma = 5 years for age).
    """

    name = "rbf"
    accepts_missing_with = 'missing = "neutral"'

    class Config(ComponentConfig):
        model_config = ConfigDict(json_schema_extra={"examples": [
            {"columns": ["age"], "sigma": 5.0}]})
        columns: list[str] = Field(min_length=1, description="Continuous metadata columns.")
        sigma: float | list[float] = Field(
            default=5.0, description="Bandwidth per column (one value for all, or one each).")
        missing: Missing = Field(default="error", description=MISSING_HELP)

        @model_validator(mode="after")
        def _sigmas(self) -> RBFAnchor.Config:
            sig = self.sigma if isinstance(self.sigma, list) else [self.sigma]
            if isinstance(self.sigma, list) and len(sig) != len(self.columns):
                raise ValueError(f"sigma has {len(sig)} values for {len(self.columns)} columns")
            if any(s <= 0 for s in sig):
                raise ValueError(f"sigma must be > 0, got {self.sigma}")
            return self

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.config.columns)

    @property
    def complete_columns(self) -> tuple[str, ...]:
        return () if self.config.missing == "neutral" else self.columns

    def sigmas(self) -> list[float]:
        sigma = self.config.sigma
        return list(sigma) if isinstance(sigma, list) else [sigma] * len(self.columns)

    def __call__(self, meta: dict[str, Tensor]) -> Tensor:
        cols = [column(meta, c, self.name).double() for c in self.columns]
        y = torch.stack(cols, 1)  # (B, n_columns)
        scaled = y / torch.tensor(self.sigmas(), dtype=torch.float64, device=y.device)
        sq = ((scaled[:, None, :] - scaled[None, :, :]) ** 2).sum(-1)  # (B, B)
        missing = torch.isnan(y)
        bad = ", ".join(n for c, n in enumerate(self.columns) if missing[:, c].any())
        sim = torch.exp(-sq / 2).nan_to_num(0.0)
        return finish(sim, missing.any(1), self.config.missing, self.name, bad)


class CategoricalAnchor(Anchor):
    """``k(a, b) = 1`` if the codes are equal, else ``off_value`` (one categorical column)."""

    name = "categorical"
    accepts_missing_with = 'missing = "neutral"'

    class Config(ComponentConfig):
        model_config = ConfigDict(json_schema_extra={"examples": [{"column": "sex"}]})
        column: str = Field(description="Categorical column of integer codes (-1 = missing).")
        off_value: float = Field(default=0.0, ge=0, le=1,
                                 description="Similarity of two different categories.")
        missing: Missing = Field(default="error", description=MISSING_HELP)

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.config.column,)

    @property
    def complete_columns(self) -> tuple[str, ...]:
        return () if self.config.missing == "neutral" else self.columns

    def __call__(self, meta: dict[str, Tensor]) -> Tensor:
        y = column(meta, self.config.column, self.name)
        same = y[:, None] == y[None, :]
        sim = torch.where(same, 1.0, self.config.off_value).double()
        missing = (y < 0) | (torch.isnan(y) if y.is_floating_point() else torch.zeros_like(same[0]))
        return finish(sim, missing, self.config.missing, self.name, self.config.column)


CHILDREN: dict[str, type[Anchor]] = {a.name: a for a in (RBFAnchor, CategoricalAnchor)}


class CombinedAnchor(Anchor):
    """Product or weighted mean of child kernels, e.g. age RBF x same sex.

    Children are ``{name = "rbf" | "categorical", ...}`` tables built from this plugin's
    classes (validated with the config, so a bad child fails before training). ``product``
    keeps a pair similar only if every kernel does; ``weighted_sum`` uses ``weights``
    normalised to sum 1 (equal weights by default), so the result stays in [0, 1].
    """

    name = "combined"

    class Config(ComponentConfig):
        model_config = ConfigDict(json_schema_extra={"examples": [{"anchors": [
            {"name": "rbf", "columns": ["age"], "sigma": 5.0},
            {"name": "categorical", "column": "sex"}], "mode": "product"}]})
        anchors: list[dict[str, Any]] = Field(
            min_length=1, description="Child anchors: [{name = 'rbf', columns = ['age']}, ...].")
        mode: Literal["product", "weighted_sum"] = Field(default="product",
                                                         description="How to combine.")
        weights: list[float] | None = Field(default=None,
                                            description="weighted_sum weights (>= 0).")

        @model_validator(mode="after")
        def _children(self) -> CombinedAnchor.Config:
            for i, spec in enumerate(self.anchors):
                name = spec.get("name")
                if name not in CHILDREN:
                    raise ValueError(f"anchors[{i}].name must be one of {sorted(CHILDREN)}, "
                                     f"got {name!r}")
                CHILDREN[name].Config(**{k: v for k, v in spec.items() if k != "name"})
            if self.weights is not None:
                if len(self.weights) != len(self.anchors) or min(self.weights) < 0:
                    raise ValueError("weights needs one value >= 0 per anchor")
                if sum(self.weights) <= 0:
                    raise ValueError("weights must not all be 0")
            return self

    def __init__(self, config: ComponentConfig):
        super().__init__(config)
        self.children = [
            CHILDREN[s["name"]](CHILDREN[s["name"]].Config(
                **{k: v for k, v in s.items() if k != "name"}))
            for s in self.config.anchors]

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for child in self.children for c in child.columns))

    @property
    def complete_columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for child in self.children for c in child.complete_columns))

    def __call__(self, meta: dict[str, Tensor]) -> Tensor:
        kernels = torch.stack([child(meta) for child in self.children])  # (n, B, B)
        if self.config.mode == "product":
            return kernels.prod(0)
        w = torch.tensor(self.config.weights or [1.0] * len(self.children),
                         dtype=kernels.dtype, device=kernels.device)
        return torch.einsum("n,nij->ij", w / w.sum(), kernels).clamp(0, 1)
