"""Benchmark configuration: pydantic models of a benchmark TOML file.

Structure is checked by pydantic (``extra="forbid"`` everywhere, so a typo in a key is an
error); component parameters (``{name = "simclr", temperature = 0.1}``) are then checked against
the ``Config`` of the plugin that provides the component. Every message starts with the path of
the offending field, e.g. ``pretrain.objectives[1].temperature: Input should be a valid number``.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ssltk.engine.optim import OptimConfig
from ssltk.errors import ConfigError
from ssltk.registry import Registry, format_validation_error


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class SynthSpec(StrictModel):
    """How to build a missing store with ``ssltk synth`` (demo benchmarks)."""

    subjects: int = Field(ge=4)
    shape: list[int] = Field(min_length=2, max_length=3)
    seed: int = 0


class DataConfig(StrictModel):
    pretrain_store: Path | list[Path] = Field(
        description="HDF5 store(s) of unlabelled volumes to pretrain on (a list is a grid axis).")
    finetune_store: Path = Field(description="HDF5 store of the labelled cohort.")
    target: str = Field(description="Metadata column to predict when finetuning.")
    task: Literal["classification", "regression"] = "classification"
    classes: list[str] | None = Field(
        default=None, description="Classes of `target` to keep (classification), e.g. ['CN', 'AD'].")
    synth: dict[Literal["pretrain", "finetune"], SynthSpec] = Field(
        default_factory=dict, description="Build these stores with `ssltk synth` when missing.")
    ingest_hints: dict[Literal["pretrain", "finetune"], str] = Field(
        default_factory=dict, description="The command that builds a missing store, shown in "
                                          "the error (e.g. an `ssltk ingest nifti ...` line).")


class PretrainSettings(StrictModel):
    """How to pretrain: shared by the TOML's ``[pretrain]`` table and the engine's PretrainRun."""

    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=16, ge=2, description="Global batch, split across ranks.")
    optimizer: OptimConfig = Field(default_factory=OptimConfig)
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="auto: bf16 autocast on CUDA, fp32 on CPU.")
    channels_last: bool = False

    def settings(self) -> dict[str, Any]:
        """Just the PretrainSettings fields, e.g. to build a PretrainRun from a config."""
        return {k: getattr(self, k) for k in PretrainSettings.model_fields}


class PretrainConfig(PretrainSettings):
    objectives: list[ObjectiveSpec] = Field(min_length=1, description="A grid axis.")
    augmentations: list[ComponentSpec] | None = Field(
        default=None, description="Pipeline applied to make each view, in order; "
                                  "None uses ssltk.augment.DEFAULT_PIPELINE.")
    augmentation_sets: dict[str, list[ComponentSpec]] | None = Field(
        default=None, description="Named pipelines: a grid axis (replaces `augmentations`).")


class FinetuneConfig(StrictModel):
    modes: list[Literal["frozen", "full"]] = Field(default_factory=lambda: ["frozen"], min_length=1)
    label_fractions: list[float] = Field(
        default_factory=list, description="Fractions of the training pool (stratified).")
    n_per_class: list[int] = Field(
        default_factory=list, description="Subjects per class (balanced).")
    n_total: list[int] = Field(
        default_factory=list, description="Subjects in total (stratified by class).")
    repeats: int = Field(default=1, ge=1, description="Split draws per seed.")
    val_fraction: float = Field(default=0.2, gt=0, lt=0.5, description="Of the labelled pool.")
    test_fraction: float = Field(default=0.3, gt=0, lt=0.8, description="Of the labelled pool.")
    stratify_site: str | None = Field(default=None, description="Also stratify splits by this column.")
    epochs: int = Field(default=20, ge=1, description="Full finetuning only.")
    batch_size: int = Field(default=16, ge=1)
    lr: float = Field(default=1e-3, gt=0, description="Head lr (full finetuning).")
    encoder_lr_ratio: float = Field(default=0.1, gt=0, description="Encoder lr = lr * this.")
    patience: int = Field(default=5, ge=1)
    class_weighting: bool = False
    augmentations: list[ComponentSpec] = Field(
        default_factory=list, description="Applied to training batches in full finetuning.")
    save_models: Literal["none", "best", "all"] = Field(
        default="none", description="Save model bundles under RUN_DIR/models: 'best' keeps, per "
                                    "method and mode, the cell with the best validation score at "
                                    "the largest budget; 'all' keeps every cell's.")

    @model_validator(mode="after")
    def _budgets(self) -> FinetuneConfig:
        if not self.label_fractions and not self.n_per_class and not self.n_total:
            raise ValueError("give label_fractions, n_per_class and/or n_total")
        for f in self.label_fractions:
            if not 0 < f <= 1:
                raise ValueError(f"label_fractions must be in (0, 1], got {f}")
        return self


class ReportConfig(StrictModel):
    gradcam: bool = Field(
        default=False, description="Add a Grad-CAM panel of a few test subjects per method "
                                   "(needs finetune.save_models = 'best' or 'all').")
    gradcam_subjects: int = Field(default=3, ge=1, le=12, description="Subjects in the panel.")


class BenchmarkConfig(StrictModel):
    """A whole benchmark: data x backbone x objectives x finetuning budgets x seeds."""

    name: str
    output_dir: Path = Path("runs")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    devices: Literal["auto", "cpu"] | list[str] = Field(
        default="auto", description="auto: every CUDA device (one process each), else the CPU.")
    executor: Literal["local", "slurm", "submitit_local"] = "local"
    slurm: dict[str, str | int | float] = Field(
        default_factory=dict, description="submitit Slurm parameters (partition, timeout_min...).")
    data: DataConfig
    backbone: ComponentSpec
    pretrain: PretrainConfig
    finetune: FinetuneConfig
    report: ReportConfig = Field(default_factory=ReportConfig)

    @model_validator(mode="after")
    def _gradcam_needs_models(self) -> BenchmarkConfig:
        if self.report.gradcam and self.finetune.save_models == "none":
            raise ValueError("report.gradcam needs saved models: set finetune.save_models = "
                             "\"best\" (or \"all\")")
        return self

    def content_hash(self) -> str:
        """sha256 of the canonical JSON of the resolved config (stable across key order)."""
        return content_hash(self)


def content_hash(model: BaseModel) -> str:
    """sha256 of a pydantic model's canonical JSON (key order and formatting do not matter)."""
    text = json.dumps(model.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def check_component(registry: Registry, kind: str, spec: ComponentSpec, path: str) -> BaseModel:
    """Validate one component spec found at ``path``; return its validated Config."""
    try:
        registry.get(kind, spec.name)
    except ConfigError as exc:
        raise ConfigError(f"{path}.name: {exc}") from None
    config = registry.config(kind, spec.name, spec.params(), path)
    if kind == "objectives":
        registry.get(kind, spec.name).check_nested(config, registry, path)
    return config


def check_components(config: BenchmarkConfig, registry: Registry) -> None:
    """Validate every component's name and parameters against the installed plugins."""
    check_component(registry, "backbones", config.backbone, "backbone")
    for i, spec in enumerate(config.pretrain.augmentations or []):
        check_component(registry, "augmentations", spec, f"pretrain.augmentations[{i}]")
    for label, specs in (config.pretrain.augmentation_sets or {}).items():
        for i, spec in enumerate(specs):
            check_component(registry, "augmentations", spec,
                            f"pretrain.augmentation_sets.{label}[{i}]")
    for i, spec in enumerate(config.finetune.augmentations):
        check_component(registry, "augmentations", spec, f"finetune.augmentations[{i}]")
    for i, spec in enumerate(config.pretrain.objectives):
        path = f"pretrain.objectives[{i}]"
        check_component(registry, "objectives", spec, path)
        if spec.anchor is not None:
            if not registry.get("objectives", spec.name).uses_anchor:
                raise ConfigError(f"{path}.anchor: objective '{spec.name}' takes no anchor; remove it")
            check_component(registry, "anchors", spec.anchor, f"{path}.anchor")


def load_config(path: str | Path, registry: Registry | None = None) -> BenchmarkConfig:
    """Read and validate a benchmark TOML; with a registry, check every component too.

    Raises:
        ConfigError: one line, ``FILE: field.path: what is wrong``.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    try:
        config = BenchmarkConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc, model=BenchmarkConfig)}") from None
    if registry is not None:
        try:
            check_components(config, registry)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return config


def json_schema() -> dict[str, Any]:
    """JSON schema of the benchmark TOML (for editor completion, e.g. taplo or Even Better TOML)."""
    return BenchmarkConfig.model_json_schema()
