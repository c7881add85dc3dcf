"""Plugin hook specifications: one ``register_<kind>`` hook per extension point.

A plugin is a module named by an entry point in the ``ssltk`` group; it implements any of these
hooks with ``@ssltk.hookimpl`` and calls ``register(cls)`` once per component class.
"""

import pluggy

hookspec = pluggy.HookspecMarker("ssltk")
hookimpl = pluggy.HookimplMarker("ssltk")


@hookspec
def register_backbones(register):
    """Register Backbone classes: call ``register(cls)`` for each."""


@hookspec
def register_augmentations(register):
    """Register Augmentation classes: call ``register(cls)`` for each."""


@hookspec
def register_anchors(register):
    """Register Anchor classes: call ``register(cls)`` for each."""


@hookspec
def register_objectives(register):
    """Register Objective classes: call ``register(cls)`` for each."""


@hookspec
def register_optimizers(register):
    """Register Optimizer classes: call ``register(cls)`` for each."""
