"""The pydantic building blocks of every configuration: strict tables and component specs.

* :class:`StrictModel` – a table whose unknown keys are errors, with a stable content hash.
* :class:`ComponentSpec` – a component by registry name plus its parameters,
  ``{name = "resnet18", out_dim = 512}``; :class:`ObjectiveSpec` adds an optional anchor.

Nothing here knows the registry: :meth:`ssltk.registry.Registry.build` turns a spec into a
component.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict


def content_hash(model: BaseModel) -> str:
    """sha256 of a pydantic model's canonical JSON (key order and formatting do not matter).

    Fields named in the model's ``hash_exclude`` class attribute (settings that cannot change
    the result, e.g. the pretraining monitors) are left out.
    """
    exclude = set(getattr(type(model), "hash_exclude", ()))
    text = json.dumps(model.model_dump(mode="json", exclude=exclude), sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class StrictModel(BaseModel):
    """A configuration table: unknown keys are errors, never ignored."""

    model_config = ConfigDict(extra="forbid")

    def content_hash(self) -> str:
        """sha256 of the canonical JSON of the resolved values (stable across key order)."""
        return content_hash(self)

    def fields_of(self, base: type[BaseModel]) -> dict[str, Any]:
        """The values of ``base``'s fields (a base class of this model), by name.

        How a run takes its settings from a TOML table that shares the same base, without
        copying fields one by one: ``FinetuneRun(**config.finetune.fields_of(FinetuneSettings))``.
        """
        return {name: getattr(self, name) for name in base.model_fields}


class ComponentSpec(BaseModel):
    """A component by registry name plus its parameters: ``{name = "resnet18", out_dim = 512}``."""

    model_config = ConfigDict(extra="allow")
    name: str

    def params(self) -> dict[str, Any]:
        """The parameters, i.e. every key but ``name``."""
        return dict(self.model_extra or {})


class ObjectiveSpec(ComponentSpec):
    """An objective, optionally with an anchor: ``{name = "yaware", anchor = {name = "rbf", ...}}``."""

    anchor: ComponentSpec | None = None
