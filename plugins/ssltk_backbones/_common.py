"""Pieces shared by the MONAI-based backbones."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor, nn

from ssltk.interfaces import ComponentConfig


class EncoderConfig(ComponentConfig):
    out_dim: int | None = Field(
        default=None, ge=1,
        description="Size of the representation; None keeps the encoder's pooled width, "
                    "another value adds a linear layer.")
    norm: Literal["batch", "instance", "group"] = Field(
        default="batch", description="Normalisation layers ('group' uses 8 groups).")


def norm_arg(norm: str) -> str | tuple:
    """MONAI's norm argument for our ``norm`` choice."""
    return ("group", {"num_groups": 8}) if norm == "group" else norm


def output_layer(width: int, out_dim: int | None) -> tuple[nn.Module, int]:
    """Identity when ``out_dim`` is None or equal to ``width``, else a Linear; and the final dim."""
    if out_dim is None or out_dim == width:
        return nn.Identity(), width
    return nn.Linear(width, out_dim), out_dim


def global_pool(x: Tensor) -> Tensor:
    """``(B, C, *spatial) -> (B, C)`` average over every spatial axis."""
    return x.flatten(2).mean(-1)
