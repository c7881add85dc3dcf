"""SimCLR plugin: the ``simclr`` objective and its pure loss, :func:`nt_xent_loss`.

>>> from ssltk_simclr import nt_xent_loss
>>> loss = nt_xent_loss(z1, z2, temperature=0.1)  # z1, z2: (N, D)
"""

from ssltk import hookimpl
from ssltk_simclr.loss import nt_xent_logits, nt_xent_loss, positive_top1
from ssltk_simclr.objective import SimCLR, SimCLRConfig

__all__ = ["SimCLR", "SimCLRConfig", "nt_xent_logits", "nt_xent_loss", "positive_top1"]


@hookimpl
def register_objectives(register):
    """Register the ``simclr`` objective."""
    register(SimCLR)
