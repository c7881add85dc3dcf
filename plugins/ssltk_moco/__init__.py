"""MoCo v2 plugin: the ``moco`` objective and its pure loss, :func:`moco_loss`.

>>> from ssltk_moco import moco_loss
>>> loss = moco_loss(q, k, queue, temperature=0.2)  # q, k: (N, D); queue: (K, D)
"""

from ssltk import hookimpl
from ssltk_moco.loss import moco_logits, moco_loss
from ssltk_moco.objective import MoCo, MoCoConfig

__all__ = ["MoCo", "MoCoConfig", "moco_logits", "moco_loss"]


@hookimpl
def register_objectives(register):
    """Register the ``moco`` objective."""
    register(MoCo)
