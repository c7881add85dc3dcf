"""Sharpness-aware minimisation around any registered optimiser: SAM and adaptive SAM (ASAM).

* :class:`SAM` – the torch optimiser, a :class:`~ssltk.interfaces.TwoStepOptimizer` wrapping a
  base optimiser that makes the actual update.
* :class:`Sam` – the ``sam`` component: ``{name = "sam", base = {name = "sgd", momentum = 0.9},
  rho = 2.0, adaptive = true}``.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from ssltk.errors import ConfigError
from ssltk.interfaces import ComponentConfig, Optimizer, TwoStepOptimizer
from ssltk.specs import ComponentSpec

EPS = 1e-12
"""Added to the gradient norm: a zero gradient gives a zero perturbation, not a NaN."""


def perturbation(params: list[Tensor], grads: list[Tensor], rho: float,
                 adaptive: bool) -> list[Tensor]:
    """SAM's ascent step ``e(w)`` for each parameter tensor (one global norm over all of them).

    * SAM (Foret et al., ICLR 2021, eq. 2 with p = 2): ``e = rho * g / ||g||``.
    * ASAM (Kwon et al., ICML 2021, eq. 7 with T_w = |w| elementwise):
      ``e = rho * T_w^2 g / ||T_w g||``, scale-invariant: rescaling a layer's weights rescales
      its perturbation with them.

    Args:
        params: parameter tensors ``w_i`` (any shapes).
        grads: their gradients ``g_i``, same shapes.
        rho: radius of the neighbourhood (``||e|| = rho`` for SAM, ``||T_w^-1 e|| = rho`` for ASAM).
        adaptive: ASAM instead of SAM.

    Returns:
        ``e_i`` for each parameter (the norm is summed in float32, float64 for float64 tensors).
    """
    if not params:
        return []
    scaled = [g * w.abs() if adaptive else g for w, g in zip(params, grads)]  # T_w g
    norms = [torch.linalg.vector_norm(s) for s in scaled]
    like = norms[0].new_empty((), dtype=torch.float32) if norms[0].dtype != torch.float64 \
        else norms[0]
    norm = torch.linalg.vector_norm(torch.stack([n.to(like) for n in norms]))  # ||T_w g||
    scale = rho / (norm + EPS)
    # T_w (T_w g) rho / ||T_w g||
    return [(s * w.abs() if adaptive else s) * scale.to(s.device) for w, s in zip(params, scaled)]


class SAM(TwoStepOptimizer):
    """SAM / ASAM around ``base`` (Foret et al., ICLR 2021; Kwon et al., ICML 2021).

    One step with gradients ``g`` at ``w`` (see :class:`~ssltk.interfaces.TwoStepOptimizer`):
    :meth:`first_step` moves to ``w + e(w)`` (:func:`perturbation`); after the caller's second
    backward pass, :meth:`step` restores ``w`` exactly (a copy, not ``w + e - e``) and lets the
    base optimiser update it with the gradient taken at ``w + e(w)``.

    The param groups are the base optimiser's own (a schedule that sets ``lr`` reaches it), and
    so is :meth:`state_dict`: SAM keeps nothing between steps, so a checkpoint of SAM is a
    checkpoint of its base and resuming gives the same numbers.

    Args:
        base: the optimiser making the update (its param groups are shared).
        rho: neighbourhood radius (SAM: 0.05 on CIFAR; ASAM: 0.5-2).
        adaptive: ASAM's scale-invariant neighbourhood.
    """

    def __init__(self, base: torch.optim.Optimizer, rho: float = 0.05, adaptive: bool = False):
        if rho <= 0:
            raise ValueError(f"invalid SAM rho={rho}")
        self.base, self.rho, self.adaptive = base, float(rho), bool(adaptive)
        super().__init__(base.param_groups, {})
        self.param_groups = base.param_groups  # the very same dicts: one lr for both
        self._perturbed = False

    def _with_grad(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.grad is not None]

    @torch.no_grad()
    def first_step(self) -> None:
        """``w <- w + e(w)`` from the current gradients; ``w`` kept in ``state[p]["w"]``."""
        if self._perturbed:
            raise RuntimeError("SAM.first_step() called twice without step() in between")
        params = self._with_grad()
        for p, e in zip(params, perturbation(params, [p.grad for p in params], self.rho,
                                             self.adaptive)):
            self.state[p]["w"] = p.detach().clone()
            p.add_(e.to(p.dtype))
        self._perturbed = True

    @torch.no_grad()
    def restore(self) -> None:
        """Back to the weights before :meth:`first_step` (bit for bit)."""
        for group in self.param_groups:
            for p in group["params"]:
                w = self.state[p].pop("w", None) if p in self.state else None
                if w is not None:
                    p.copy_(w)
        self._perturbed = False

    @torch.no_grad()
    def step(self, closure=None):
        """Restore ``w`` and update it with the gradients now held (taken at ``w + e``).

        Args:
            closure: optional, as in torch: zeroes the gradients, recomputes the loss and
                backpropagates. With it, ``step`` is the whole SAM step: the gradients held on
                entry are those at ``w``; the loss returned is the closure's first value.

        Raises:
            RuntimeError: no closure and no :meth:`first_step` since the last step.
        """
        loss = None
        if closure is not None:
            self.first_step()
            with torch.enable_grad():
                loss = closure()
        if not self._perturbed:
            raise RuntimeError("SAM.step() needs first_step() and a second backward pass first "
                               "(or a closure)")
        self.restore()
        self.base.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base.load_state_dict(state_dict)
        self.param_groups = self.base.param_groups  # torch rebuilt the group dicts


class SamConfig(ComponentConfig):
    base: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="sgd"),
        description="The optimiser that makes the update, with its parameters "
                    "({name = \"sgd\", momentum = 0.9}); not a two-step one.")
    rho: float = Field(default=0.05, gt=0, description="Neighbourhood radius (SAM 0.05; the "
                                                       "adaptive form takes ~0.5-2).")
    adaptive: bool = Field(default=False, description="ASAM: e = rho T_w^2 g / ||T_w g||, "
                                                      "T_w = |w| (Kwon et al., ICML 2021).")


class Sam(Optimizer):
    """Sharpness-aware minimisation (``sam``): two forward/backward passes per step."""

    name = "sam"
    Config = SamConfig
    two_step = True

    @classmethod
    def check_nested(cls, config: SamConfig, registry: Any, path: str) -> None:
        registry.validate("optimizers", config.base, f"{path}.base")
        if registry.get("optimizers", config.base.name).two_step:
            raise ConfigError(f"{path}.base.name: '{config.base.name}' takes two passes itself; "
                              "give a one-step optimiser (adamw, sgd, lars)")

    def build(self, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
        registry = self.registry
        if registry is None:
            from ssltk.registry import default_registry

            registry = default_registry()
        base = registry.build("optimizers", self.config.base, "base").build(groups, lr)
        return SAM(base, self.config.rho, self.config.adaptive)
