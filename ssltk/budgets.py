"""Label budgets: how many labelled subjects a finetuning cell trains on.

A :class:`Budget` is a kind and a value: ``n_per_class`` (balanced few-shot), ``n_total``
(stratified by class) or ``fraction`` of the training pool. The benchmark TOML lists them
(``finetune.n_per_class``, ``finetune.n_total``, ``finetune.label_fractions``;
:meth:`ssltk.config.FinetuneConfig.budgets` enumerates them), :func:`ssltk.data.splits.draw_budget`
draws a budget's subjects and the report groups results by budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BUDGET_KINDS = ("n_per_class", "n_total", "fraction")


@dataclass(frozen=True)
class Budget:
    """A labelled-data budget: ``kind`` is ``n_per_class``, ``n_total`` or ``fraction``.

    ``label`` ("10/class", "100 total", "10%") is derived from kind and value when not given.
    ``source`` names where the budget was set (``finetune.n_per_class[1]``, ``--n-total``) for
    error messages; it takes no part in equality.
    """

    kind: str
    value: float
    label: str = ""
    source: str = field(default="budget", compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", budget_label(self.kind, self.value))

    @property
    def sort_key(self) -> tuple:
        """Budgets sort by kind, then numerically by value (not by label: "100" > "20")."""
        kind = BUDGET_KINDS.index(self.kind) if self.kind in BUDGET_KINDS else len(BUDGET_KINDS)
        return kind, self.kind, float(self.value)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value}


def budget_label(kind: str, value: float) -> str:
    """``10/class``, ``100 total`` or ``10%``."""
    if kind == "n_per_class":
        return f"{int(value)}/class"
    if kind == "n_total":
        return f"{int(value)} total"
    return f"{100 * value:g}%"
