"""y-Aware plugin: the ``yaware`` objective and its pure loss, :func:`yaware_loss`.

>>> from ssltk_yaware import yaware_loss
>>> loss = yaware_loss(z1, z2, labels=age, sigma=5.0)        # z1, z2: (N, D); age: (N,)
>>> loss = yaware_loss(z1, z2, kernel=anchor(meta))           # any (N, N) kernel
"""

from ssltk import hookimpl
from ssltk_yaware.loss import rbf_kernel, yaware_loss, yaware_weights
from ssltk_yaware.objective import YAware, YAwareConfig

__all__ = ["YAware", "YAwareConfig", "rbf_kernel", "yaware_loss", "yaware_weights"]


@hookimpl
def register_objectives(register):
    """Register the ``yaware`` objective."""
    register(YAware)
