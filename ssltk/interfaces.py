"""The extension points of ssltk: what a plugin implements.

Five kinds of component are registered by plugins (see :mod:`ssltk.hookspecs`):

* :class:`Backbone` – an encoder ``(B, C, *spatial) -> (B, out_dim)``.
* :class:`Augmentation` – a batched random transform ``(B, C, *spatial) -> same shape``.
* :class:`Anchor` – a (B, B) similarity kernel over subjects' metadata.
* :class:`Objective` – a self-supervised loss with its own heads and state.
* :class:`Optimizer` – builds the torch optimiser of a training run from parameter groups; a
  :class:`TwoStepOptimizer` (SAM) asks the engine for a second forward/backward pass per step.

Every component class has a class attribute ``name`` (its registry name) and a nested pydantic
``Config`` model (``extra="forbid"``) that validates the parameters a TOML file gives it. The
registry builds a component as ``cls(config, **context)``; the context a kind receives is stated
on each class below.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from ssltk.resample import resample


class ComponentConfig(BaseModel):
    """Base of every component's ``Config``: unknown keys are errors, never ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Backbone(nn.Module, ABC):
    """Encoder of 2D or 3D images.

    Built as ``cls(config, in_channels=C, spatial_dims=2|3)``.

    Attributes:
        in_channels: input channels; spatial_dims: 2 or 3 (as built).
        out_dim: size of the pooled representation returned by :meth:`forward`.
        feature_channels: channels of each map returned by :meth:`forward_features`,
            from the highest resolution to the lowest.
        feature_strides: downsampling factor of each of those maps relative to the input.
    """

    name: ClassVar[str]
    Config: ClassVar[type[ComponentConfig]] = ComponentConfig
    in_channels: int
    spatial_dims: int
    out_dim: int
    feature_channels: tuple[int, ...]
    feature_strides: tuple[int, ...]

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, *spatial) -> (B, out_dim)``."""

    @abstractmethod
    def forward_features(self, x: Tensor) -> list[Tensor]:
        """``(B, C, *spatial) -> [(B, c_i, *spatial / s_i)]``, high to low resolution."""

    @classmethod
    def export_state_dict(cls, state: dict[str, Tensor]) -> dict[str, Tensor] | None:
        """This backbone's ``state_dict`` as the plain state_dict of the network it wraps.

        What ``ssltk export`` writes, so that a pretrained encoder loads into its framework's
        own class (MONAI, for the built-in backbones) without ssltk. A classmethod: it maps
        the saved weights without building the network. None (the default): the backbone wraps
        no other framework's network, and ``ssltk export`` says so.
        """
        return None


class AugmentationConfig(ComponentConfig):
    """Every augmentation has ``p``: the probability that a sample is transformed."""

    p: float = 1.0


class Augmentation(ABC):
    """A batched, seeded random transform.

    Built as ``cls(config)``. Calling it on ``x`` of shape ``(B, C, *spatial)`` (2D or 3D) returns
    a tensor of the same shape, dtype and device. Every random number is drawn from
    ``generator`` (one draw per sample), so the same generator state gives the same output;
    ``p`` decides per sample whether it is transformed at all.
    """

    name: ClassVar[str]
    Config: ClassVar[type[AugmentationConfig]] = AugmentationConfig

    def __init__(self, config: AugmentationConfig):
        self.config = config

    @abstractmethod
    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


class SpatialAugmentation(Augmentation):
    """An augmentation that is an affine resampling of space (crop, flip, affine...).

    It only draws matrices; :func:`ssltk.resample.resample` applies them. Because matrices
    compose, :class:`ssltk.augment.Pipeline` fuses consecutive spatial augmentations into one
    resampling (one interpolation instead of one per op).

    Convention: a matrix ``M`` of shape ``(D+1, D+1)`` maps *output* coordinates to *input*
    coordinates, both normalised to [-1, 1] per spatial axis (``align_corners=False``: -1 and 1
    are the outer edges of the first and last voxels) and ordered as the tensor's spatial axes.
    Applying ``A`` then ``B`` is one resampling with ``A @ B``.
    """

    @abstractmethod
    def sample_matrices(self, x_shape: torch.Size, generator: torch.Generator) -> Tensor:
        """Draw one matrix per sample: ``(B, D+1, D+1)`` float64 on CPU, identity if not applied."""

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return resample(x, self.sample_matrices(x.shape, generator))


class Anchor(ABC):
    """A similarity kernel between subjects, computed from their metadata.

    Built as ``cls(config)``. ``columns`` names the metadata columns it reads. Calling it with
    ``meta`` (column -> ``(B,)`` tensor; missing continuous values are NaN, missing categorical
    values are -1) returns a symmetric ``(B, B)`` float tensor with values in [0, 1] and ones on
    the diagonal.
    """

    name: ClassVar[str]
    Config: ClassVar[type[ComponentConfig]] = ComponentConfig

    def __init__(self, config: ComponentConfig):
        self.config = config

    accepts_missing_with: ClassVar[str | None] = None
    """The setting that lets the anchor accept missing values (``'missing = "neutral"'``), named
    in the error about a column with missing values; None: it has none."""

    @property
    @abstractmethod
    def columns(self) -> tuple[str, ...]: ...

    @property
    def complete_columns(self) -> tuple[str, ...]:
        """The columns of ``columns`` in which a missing value is an error (default: all)."""
        return self.columns

    @abstractmethod
    def __call__(self, meta: dict[str, Tensor]) -> Tensor: ...


@dataclass
class Batch:
    """What an objective receives for one training step.

    Attributes:
        views: ``n_views`` independently augmented copies of the batch, each ``(B, C, *spatial)``.
        meta: metadata column -> ``(B,)`` tensor on the views' device (float, NaN = missing, for
            continuous columns; long, -1 = missing, for categorical ones).
        generator: seeded generator for any extra randomness the objective needs.
        original: the batch before augmentation ``(B, C, *spatial)``, when the objective asked for
            it (``Objective.needs_original``).
    """

    views: list[Tensor]
    meta: dict[str, Tensor] = field(default_factory=dict)
    generator: torch.Generator | None = None
    original: Tensor | None = None


@dataclass
class ObjectiveOutput:
    """Result of one objective step.

    Attributes:
        loss: scalar tensor to minimise.
        logs: values to log (component losses, accuracies...): floats, or 0-d tensors, which
            the engine reads back only every few steps instead of stalling each GPU step
            (``loss.detach()``, not ``loss.item()``).
        embeddings: optional ``(n_views, B, D)`` normalised embeddings, used by the engine to
            report alignment and uniformity of contrastive objectives.
    """

    loss: Tensor
    logs: dict[str, float | Tensor] = field(default_factory=dict)
    embeddings: Tensor | None = None


class Objective(nn.Module, ABC):
    """A self-supervised objective: owns its heads and state, computes a loss from a batch.

    Built as ``cls(config, backbone=..., anchor=Anchor | None, registry=Registry)``. The backbone
    is the encoder to pretrain (only its weights are transferred to finetuning); everything
    else the objective creates (projection heads, momentum encoders, decoders) is its own. The
    registry lets an objective build other components by name (multitask wraps another
    objective); ``anchor`` is None unless the TOML gives one.

    State that ``forward`` updates in training (queues, running statistics) must live in buffers
    (``register_buffer``): with a two-step optimiser (SAM) the engine runs ``forward`` twice per
    step and restores the buffers around the second run, so that state is updated once per
    step; plain Python attributes are not restored.

    Class attributes:
        n_views: how many augmented views of each sample the engine must provide.
        needs_original: whether the engine must pass the un-augmented batch too.
        uses_anchor: whether the objective accepts an anchor (``anchor = {...}`` in the TOML).
        sync_batchnorm: whether the engine may convert its batch norms to SyncBatchNorm under
            DDP on GPU (False for objectives that manage BN statistics themselves, like MoCo's
            shuffled BN).
    """

    name: ClassVar[str]
    Config: ClassVar[type[ComponentConfig]] = ComponentConfig
    n_views: ClassVar[int] = 2
    needs_original: ClassVar[bool] = False
    uses_anchor: ClassVar[bool] = False
    sync_batchnorm: ClassVar[bool] = True

    def __init__(
        self,
        config: ComponentConfig,
        backbone: Backbone,
        anchor: Anchor | None = None,
        registry: Any = None,
    ):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.anchor = anchor
        self.registry = registry

    def required_columns(self) -> tuple[str, ...]:
        """Metadata columns each batch must carry (anchors' and supervised heads' columns)."""
        return ()

    def complete_columns(self) -> tuple[str, ...]:
        """The columns of :meth:`required_columns` in which a missing value is an error (the
        benchmark drops or refuses such rows before training); default: all of them."""
        return self.required_columns()

    @classmethod
    def check_nested(cls, config: ComponentConfig, registry: Any, path: str) -> None:
        """Validate settings that name other components (e.g. multitask's inner objective).

        Called by config validation before anything is built, so ``ssltk validate`` reports
        errors with their TOML path (``path`` is the objective's, e.g. ``pretrain.objectives[2]``).
        """

    @abstractmethod
    def forward(self, batch: Batch) -> ObjectiveOutput: ...

    def view_pipeline(self, spatial_dims: int) -> list[dict[str, Any]] | None:
        """The objective's own view pipeline for runs that give none (e.g. the augmentations
        of its paper under ``preset = "paper"``); None: the engine's default pipeline."""
        return None

    def on_step_end(self) -> None:
        """Called after each optimiser step (momentum encoder updates, queue bookkeeping)."""


class Optimizer(ABC):
    """Builds the torch optimiser of a training run (``{name = "sgd", momentum = 0.9}``).

    Built as ``cls(config, registry=Registry)``; the registry lets an optimiser build another by
    name (SAM wraps a base optimiser). The parameters a spec gives are the optimiser's own
    (momentum, betas...); the learning rate, its schedule, weight decay and clipping are the
    engine's (``[pretrain.optimizer]``'s ``lr``, ``weight_decay``...), the same for every
    optimiser.

    Class attributes:
        two_step: whether :meth:`build` returns a :class:`TwoStepOptimizer`.
    """

    name: ClassVar[str]
    Config: ClassVar[type[ComponentConfig]] = ComponentConfig
    two_step: ClassVar[bool] = False

    def __init__(self, config: ComponentConfig, registry: Any = None):
        self.config = config
        self.registry = registry

    @abstractmethod
    def build(self, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
        """The torch optimiser over ``groups``.

        Args:
            groups: param-group dicts (:func:`ssltk.engine.optim.param_groups`), each with its
                ``params``, ``weight_decay`` and ``lars_adapt`` (False for biases and norms),
                some with their own ``lr``.
            lr: the learning rate of groups without one (the schedule then scales every group).
        """

    @classmethod
    def check_nested(cls, config: ComponentConfig, registry: Any, path: str) -> None:
        """Validate settings that name other components (SAM's ``base``); see
        :meth:`Objective.check_nested`."""


class TwoStepOptimizer(torch.optim.Optimizer):
    """A torch optimiser whose update needs the gradient at a second point (SAM, ASAM).

    The engine's step with one (``ssltk.engine.pretraining``)::

        loss(w).backward()          # p.grad = g, the (all-reduced under DDP) gradient at w
        opt.first_step()            # w -> w + e(w, g), remembering w
        opt.zero_grad(); loss(w + e).backward()   # p.grad = g', same batch
        clip g' (grad_clip)         # the gradient that is applied
        opt.step()                  # w restored exactly, then the update with g'

    Subclasses implement :meth:`first_step` and :meth:`step`; ``step(closure)`` must also work
    alone, as in torch (``closure`` zeroes the gradients, recomputes the loss and backpropagates).
    """

    def first_step(self) -> None:
        """Move the parameters to where the second gradient is taken, from their ``grad``."""
        raise NotImplementedError


KINDS: dict[str, type[Any]] = {
    "backbones": Backbone,
    "augmentations": Augmentation,
    "anchors": Anchor,
    "objectives": Objective,
    "optimizers": Optimizer,
}
"""Plural kind name (as in the hook ``register_<kind>``) -> base class."""
