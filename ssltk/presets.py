"""Named sets of a component's settings: ``{name = "moco", preset = "paper"}``.

A component whose defaults differ from its paper's settings inherits :class:`PresetConfig` and
lists them in ``presets``; one key then gives the published setting. Keys written beside the
preset win over it (``{name = "moco", preset = "paper", queue_size = 4096}`` is the paper's
MoCo v2 with a smaller queue), so a preset is a starting point, never a lock::

    class MoCoConfig(ProjectionHeadConfig, PresetConfig):
        presets: ClassVar[dict[str, dict]] = {"paper": {"momentum": 0.999, ...}}
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ssltk.errors import did_you_mean
from ssltk.interfaces import ComponentConfig

__all__ = ["PresetConfig"]


class PresetConfig(ComponentConfig):
    """A component ``Config`` with named presets; explicit keys override the preset's."""

    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    preset: str | None = Field(
        default=None, description="A named set of settings: 'paper' gives the published ones "
                                  "(keys written beside it win). None: the defaults.")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """The preset's settings under the keys written beside it."""
        if isinstance(data, dict) and data.get("preset") in cls.presets:
            return {**cls.presets[data["preset"]], **data}
        return data

    @field_validator("preset")
    @classmethod
    def _known(cls, name: str | None) -> str | None:
        if name is not None and name not in cls.presets:
            known = sorted(cls.presets)
            raise PydanticCustomError("unknown_preset", (
                f"unknown preset '{name}'.{did_you_mean(name, known)} Available: "
                f"{', '.join(known) or 'none'} (or remove the key for the defaults)"))
        return name
