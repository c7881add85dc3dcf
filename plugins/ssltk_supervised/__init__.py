"""Supervised pretraining on metadata columns: the ``supervised`` objective.

The y-Aware paper's supervised baseline (Dufumier et al., MICCAI 2021): pretrain the encoder to
predict metadata of the pretraining cohort (age, sex, site...) instead of with a
self-supervised loss, then transfer it like any other encoder. In a benchmark it is the
positive control: an encoder that learnt something known to be relevant.
"""

from ssltk import hookimpl
from ssltk_supervised.objective import Supervised, SupervisedConfig, SupervisedTask

__all__ = ["Supervised", "SupervisedConfig", "SupervisedTask"]


@hookimpl
def register_objectives(register):
    """Register the ``supervised`` objective."""
    register(Supervised)
