"""Pieces shared by the MONAI-based backbones."""

from __future__ import annotations

from abc import abstractmethod
from typing import Literal

from pydantic import Field
from torch import Tensor, nn

from ssltk.interfaces import Backbone, ComponentConfig


class EncoderConfig(ComponentConfig):
    out_dim: int | None = Field(
        default=None, ge=1,
        description="Size of the representation; None keeps the encoder's pooled width, "
                    "another value adds a linear layer.")
    norm: Literal["batch", "instance", "group"] = Field(
        default="batch", description="Normalisation layers ('group' uses 8 groups).")


def norm_arg(norm: str) -> str | tuple:
    """MONAI's norm argument for our ``norm`` choice."""
    if norm == "group":
        return ("group", {"num_groups": 8})
    if norm == "instance":  # affine, so MONAI's weight init (and learning) has weights to set
        return ("instance", {"affine": True})
    return norm


def replace_batch_norm(module: nn.Module, norm: str) -> nn.Module:
    """Swap every BatchNorm layer of ``module`` for ``norm`` ("group": 8 groups, or "instance").

    Needed because MONAI's ResNet (1.3-1.6) only passes ``norm`` to its stem: the residual
    blocks always get BatchNorm. Group/instance norm make a sample's output independent of the
    rest of its batch (small batches, exact distributed equivalence).
    """
    if norm == "batch":
        return module
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            c = child.num_features
            if norm == "group":
                new = nn.GroupNorm(min(8, c), c)
            else:
                instance = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
                new = instance[_dims(child)](c, affine=True)
            setattr(module, name, new)
        else:
            replace_batch_norm(child, norm)
    return module


def _dims(bn: nn.Module) -> int:
    return {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}[type(bn)]


def output_layer(width: int, out_dim: int | None) -> tuple[nn.Module, int]:
    """Identity when ``out_dim`` is None or equal to ``width``, else a Linear; and the final dim."""
    if out_dim is None or out_dim == width:
        return nn.Identity(), width
    return nn.Linear(width, out_dim), out_dim


def global_pool(x: Tensor) -> Tensor:
    """``(B, C, *spatial) -> (B, C)`` average over every spatial axis."""
    return x.flatten(2).mean(-1)


class MonaiBackbone(Backbone):
    """Base of the built-in backbones: a MONAI network kept as ``self.net``, globally pooled.

    Keeping the MONAI module whole (rather than re-implementing it) is what lets
    :meth:`export_state_dict` hand back the MONAI network's own state_dict. A subclass builds the
    network (:meth:`make_net`) and declares its feature maps (:meth:`feature_maps`).
    """

    Config = EncoderConfig

    def __init__(self, config: EncoderConfig, in_channels: int = 1, spatial_dims: int = 3):
        super().__init__()
        self.config = config
        self.in_channels, self.spatial_dims = in_channels, spatial_dims
        self.net = replace_batch_norm(self.make_net(config, in_channels, spatial_dims),
                                      config.norm)
        self.feature_channels, self.feature_strides = self.feature_maps(config)
        self.head, self.out_dim = output_layer(self.feature_channels[-1], config.out_dim)

    @abstractmethod
    def make_net(self, config: EncoderConfig, in_channels: int, spatial_dims: int) -> nn.Module:
        """The MONAI network (its norm layers are swapped for ``config.norm`` afterwards)."""

    @abstractmethod
    def feature_maps(self, config: EncoderConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(feature_channels, feature_strides)`` of :meth:`forward_features`."""

    def forward(self, x: Tensor) -> Tensor:
        return self.head(global_pool(self.forward_features(x)[-1]))

    @classmethod
    def export_state_dict(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The MONAI network's own state_dict: the ``net.`` entries, prefix removed."""
        return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
