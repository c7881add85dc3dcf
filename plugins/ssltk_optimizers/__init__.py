"""Optimiser plugin: ``adamw``, ``sgd``, ``lars`` and ``sam`` (SAM / ASAM around any of them).

>>> from ssltk.engine.optim import build_optimizer
>>> opt = build_optimizer(model, OptimConfig(name="sam", base={"name": "sgd"}, rho=2.0,
...                                          adaptive=True, lr=1e-2))
"""

from ssltk import hookimpl
from ssltk_optimizers.basic import AdamW, Lars, Sgd
from ssltk_optimizers.sam import SAM, Sam, SamConfig

__all__ = ["SAM", "AdamW", "Lars", "Sam", "SamConfig", "Sgd"]


@hookimpl
def register_optimizers(register):
    """Register ``adamw``, ``sgd``, ``lars`` and ``sam``."""
    for klass in (AdamW, Sgd, Lars, Sam):
        register(klass)
