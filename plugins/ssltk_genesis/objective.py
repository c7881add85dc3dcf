"""Models Genesis: restore images corrupted by four hand-designed transforms.

Zhou, Sodha, Pang, Gotway, Liang. "Models Genesis: Generic Autodidactic Models for 3D Medical
Image Analysis", MICCAI 2019; extended in Medical Image Analysis 67, 2021.

The view the pipeline gives (after its crop/flip...) is the restoration *target*. The objective
corrupts it itself, per sample and in the paper's order, with the registry's augmentations:

1. local pixel shuffling (rate 0.5),
2. non-linear intensity transformation (rate 0.9),
3. painting (rate 0.9): in-painting for 20% of painted samples, out-painting for the other 80%.

The backbone encodes the corrupted image, a U-Net decoder (:mod:`ssltk_genesis.decoder`) owned by
the objective restores it through a sigmoid, and the loss is the MSE (or L1) to the target.
Only the backbone is transferred to finetuning.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.nn import functional as F

from ssltk.errors import ConfigError
from ssltk.interfaces import Batch, ComponentConfig, Objective, ObjectiveOutput
from ssltk_genesis.decoder import UNetDecoder

TRANSFORMS = ("genesis_local_shuffle", "genesis_nonlinear", "genesis_inpaint", "genesis_outpaint")
"""Registry names of the augmentations Genesis applies, in the order it applies them."""


class GenesisConfig(ComponentConfig):
    local_shuffle_rate: float = Field(
        default=0.5, ge=0, le=1, description="Probability of local pixel shuffling (paper: 0.5).")
    nonlinear_rate: float = Field(
        default=0.9, ge=0, le=1, description="Probability of the non-linear intensity transform.")
    paint_rate: float = Field(
        default=0.9, ge=0, le=1, description="Probability of in- or out-painting (paper: 0.9).")
    inpaint_fraction: float = Field(
        default=0.2, ge=0, le=1,
        description="Share of painted samples that are in-painted; the rest are out-painted.")
    transform_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Extra parameters of each transform by registry name, e.g. "
                    "{genesis_local_shuffle = {...}}; rates are set above, not with 'p'.")
    decoder_scale: float = Field(
        default=1.0, gt=0,
        description="Decoder width relative to the encoder's feature widths (1.0 mirrors it).")
    loss: Literal["mse", "l1"] = "mse"

    @model_validator(mode="after")
    def _known_transforms(self) -> GenesisConfig:
        for name, params in self.transform_params.items():
            if name not in TRANSFORMS:
                known = ", ".join(TRANSFORMS)
                raise ValueError(f"transform_params: '{name}' is not one of {known}")
            if "p" in params:
                raise ValueError(f"transform_params.{name}.p: set the rate with the *_rate fields")
        return self


def input_geometry(backbone: nn.Module) -> tuple[int, int]:
    """``(in_channels, spatial_dims)`` of a backbone: its attributes, else its first convolution."""
    channels = getattr(backbone, "in_channels", None)
    dims = getattr(backbone, "spatial_dims", None)
    if isinstance(channels, int) and dims in (2, 3):
        return channels, dims
    for module in backbone.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            return module.in_channels, 3 if isinstance(module, nn.Conv3d) else 2
    raise ConfigError(
        f"genesis: cannot tell whether backbone {type(backbone).__name__} is 2D or 3D; "
        "give it 'in_channels' and 'spatial_dims' attributes")


def default_generator() -> torch.Generator:
    """A CPU generator (the engine's convention) seeded from torch's global RNG, so that
    ``torch.manual_seed`` still makes a batch without a generator reproducible."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))


class Genesis(Objective):
    """Models Genesis restoration objective (Zhou et al. 2019/2021). One view: the target."""

    name = "genesis"
    Config = GenesisConfig
    n_views = 1
    needs_original = False
    uses_anchor = False

    def __init__(self, config: GenesisConfig, backbone, anchor=None, registry=None):
        super().__init__(config, backbone, anchor, registry)
        if registry is None:
            from ssltk.registry import get_registry

            registry = self.registry = get_registry()
        self.transforms = {
            name: registry.create("augmentations", name,
                                  {**config.transform_params.get(name, {}), "p": 1.0},
                                  path=f"genesis.transform_params.{name}")
            for name in TRANSFORMS
        }
        in_channels, spatial_dims = input_geometry(backbone)
        self.decoder = UNetDecoder(backbone.feature_channels, in_channels, spatial_dims,
                                   config.decoder_scale)

    @classmethod
    def check_nested(cls, config: GenesisConfig, registry: Any, path: str) -> None:
        """Validate ``transform_params`` against the transforms' Configs (for ``ssltk validate``)."""
        for name in TRANSFORMS:
            params = {**config.transform_params.get(name, {}), "p": 1.0}
            registry.config("augmentations", name, params, path=f"{path}.transform_params.{name}")

    def draw_masks(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Which samples each transform corrupts: transform name -> ``(B,)`` bool, on CPU.

        All four decisions of a sample come from one draw of 4 uniforms, so the rates are exact
        in expectation and in- and out-painting are mutually exclusive.
        """
        c = self.config
        u = torch.rand((batch_size, 4), generator=generator, device=generator.device).cpu()
        painted = u[:, 2] < c.paint_rate
        inpainted = painted & (u[:, 3] < c.inpaint_fraction)
        return {
            "genesis_local_shuffle": u[:, 0] < c.local_shuffle_rate,
            "genesis_nonlinear": u[:, 1] < c.nonlinear_rate,
            "genesis_inpaint": inpainted,
            "genesis_outpaint": painted & ~inpainted,
        }

    def corrupt(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """Apply the Genesis transforms to ``x`` ``(B, C, *spatial)`` in [0, 1].

        Returns:
            The corrupted copy (``x`` is left untouched) and the masks of :meth:`draw_masks`.
        """
        masks = self.draw_masks(x.shape[0], generator)
        out = x.clone()
        for name in TRANSFORMS:
            idx = masks[name].nonzero().squeeze(1).to(x.device)
            if idx.numel():
                out[idx] = self.transforms[name](out[idx], generator)
        return out, masks

    def restore(self, x: Tensor) -> Tensor:
        """Encode and decode ``x`` ``(B, C, *spatial)``; returns the restoration in [0, 1]."""
        logits = self.decoder(self.backbone.forward_features(x), x.shape[2:])
        return torch.sigmoid(logits)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        target = batch.views[0]
        generator = batch.generator or default_generator()
        corrupted, _ = self.corrupt(target, generator)
        restored = self.restore(corrupted)
        loss_fn = F.mse_loss if self.config.loss == "mse" else F.l1_loss
        loss = loss_fn(restored, target)
        return ObjectiveOutput(loss=loss, logs={"loss": loss.detach()})
