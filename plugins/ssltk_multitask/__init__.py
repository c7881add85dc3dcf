"""Multitask pretraining: a self-supervised objective plus supervised heads on metadata."""

from ssltk import hookimpl
from ssltk.losses import masked_cross_entropy, masked_mse
from ssltk_multitask.objective import Multitask, MultitaskConfig, TaskConfig

__all__ = ["Multitask", "MultitaskConfig", "TaskConfig", "masked_cross_entropy", "masked_mse"]


@hookimpl
def register_objectives(register):
    """Register the ``multitask`` objective."""
    register(Multitask)
