"""Built-in anchors: metadata similarity kernels (rbf, categorical, combined)."""

from ssltk import hookimpl
from ssltk_anchors.kernels import CategoricalAnchor, CombinedAnchor, RBFAnchor

__all__ = ["CategoricalAnchor", "CombinedAnchor", "RBFAnchor"]


@hookimpl
def register_anchors(register):
    for cls in (RBFAnchor, CategoricalAnchor, CombinedAnchor):
        register(cls)
