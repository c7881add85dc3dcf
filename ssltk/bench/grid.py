"""Expanding a benchmark config into its grid of pretraining runs and finetuning cells.

Axes: pretraining stores x augmentation sets x objectives x seeds (pretraining runs), then
every pretraining run (plus the scratch baseline) x finetuning modes x label budgets x split
repeats (finetuning cells). Each pretraining run and each cell is identified by the content
hash of what determines its result, so a pretraining checkpoint is shared by all of its cells
and a finished cell is recognised after a crash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ssltk.bench.stats import SCRATCH, Budget
from ssltk.config import BenchmarkConfig, ComponentSpec, ObjectiveSpec
from ssltk.engine import PretrainRun
from ssltk.engine.finetuning import FinetuneRun

@dataclass
class PretrainJob:
    """One pretraining run, shared by every finetuning cell of its method and seed."""

    method: str
    run: PretrainRun
    augmentations_label: str

    @property
    def key(self) -> str:
        return self.run.content_hash()[:16]

    def out_dir(self, run_dir: Path) -> Path:
        return run_dir / "pretrain" / f"{self.method}-seed{self.run.seed}-{self.key[:8]}"


@dataclass
class Cell:
    """One finetuning cell: a method (or scratch) x mode x budget x seed x repeat."""

    method: str
    pretrain: PretrainJob | None
    mode: str
    budget: Budget
    seed: int
    repeat: int
    run: FinetuneRun  # encoder filled in at execution (it is the pretraining's output)
    split_hash: str

    @property
    def key(self) -> str:
        ident = {"finetune": self.run.model_dump(mode="json", exclude={"encoder"}),
                 "pretrain": self.pretrain.run.content_hash() if self.pretrain else None}
        text = json.dumps(ident, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Grid:
    config: BenchmarkConfig
    pretrain_jobs: list[PretrainJob] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)

    def cells_of(self, job: PretrainJob | None) -> list[Cell]:
        return [c for c in self.cells if c.pretrain is job]

    @property
    def methods(self) -> list[str]:
        return [SCRATCH] + list(dict.fromkeys(j.method for j in self.pretrain_jobs))


def budgets(config: BenchmarkConfig) -> list[Budget]:
    f = config.finetune
    return ([Budget("n_per_class", n) for n in f.n_per_class]
            + [Budget("n_total", n) for n in f.n_total]
            + [Budget("fraction", x) for x in f.label_fractions])


def augmentation_sets(config: BenchmarkConfig) -> dict[str, list[ComponentSpec] | None]:
    """Label -> pipeline (None: the default pipeline)."""
    if config.pretrain.augmentation_sets:
        return dict(config.pretrain.augmentation_sets)
    return {"default": config.pretrain.augmentations}


def method_labels(config: BenchmarkConfig) -> list[str]:
    """One unique label per objective entry: its name, numbered when a name repeats."""
    names = [o.name for o in config.pretrain.objectives]
    labels = []
    for i, name in enumerate(names):
        labels.append(name if names.count(name) == 1 else f"{name}#{names[:i + 1].count(name)}")
    return labels


def pretrain_jobs(config: BenchmarkConfig) -> list[PretrainJob]:
    """Distinct (objective, pretraining store, augmentation set, seed) combinations."""
    stores = config.data.pretrain_store
    stores = stores if isinstance(stores, list) else [stores]
    aug_sets = augmentation_sets(config)
    p = config.pretrain
    jobs = []
    for store in stores:
        for aug_label, augs in aug_sets.items():
            for label, objective in zip(method_labels(config), p.objectives):
                method = label
                if len(aug_sets) > 1:
                    method += f"+{aug_label}"
                if len(stores) > 1:
                    method += f"@{Path(store).stem}"
                for seed in config.seeds:
                    run = PretrainRun(store=store, backbone=config.backbone,
                                      objective=objective, augmentations=augs, seed=seed,
                                      **p.settings())
                    jobs.append(PretrainJob(method, run, aug_label))
    return jobs


def objective_columns(objective: ObjectiveSpec) -> list[str]:
    """Metadata columns an objective's anchor names in the config (checked before running)."""
    if objective.anchor is None:
        return []
    params = objective.anchor.params()
    cols = list(params.get("columns", [])) + ([params["column"]] if "column" in params else [])
    for child in params.get("anchors", []):
        cols += list(child.get("columns", [])) + ([child["column"]] if "column" in child else [])
    return cols
