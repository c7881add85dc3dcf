"""Objectives that misbehave on purpose, for the engine's tests."""

from __future__ import annotations

from ssltk.interfaces import Objective, ObjectiveOutput


def nan_after_two(name: str) -> type[Objective]:
    """An objective (to register as ``name``) whose loss turns NaN from its third step on."""

    class NaNAfterTwo(Objective):
        n_views = 1

        def __init__(self, config, backbone, anchor=None, registry=None):
            super().__init__(config, backbone, anchor, registry)
            self.calls = 0

        def forward(self, batch):
            self.calls += 1
            loss = self.backbone(batch.views[0]).pow(2).mean()
            return ObjectiveOutput(loss * float("nan") if self.calls > 2 else loss)

    NaNAfterTwo.name = name
    return NaNAfterTwo
