"""ssltk-barlow: the Barlow Twins objective as an ssltk plugin.

The entry point ``barlow = "ssltk_barlow"`` (group ``ssltk``) makes ssltk import this module
and call the hooks below; ``register_objectives`` registers :class:`BarlowTwins` under the name
``barlow``.
"""

from ssltk import hookimpl
from ssltk_barlow.loss import barlow_twins_loss, cross_correlation
from ssltk_barlow.objective import BarlowTwins, BarlowTwinsConfig

__all__ = ["BarlowTwins", "BarlowTwinsConfig", "barlow_twins_loss", "cross_correlation"]


@hookimpl
def register_objectives(register):
    """Register the ``barlow`` objective."""
    register(BarlowTwins)
