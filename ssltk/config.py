"""Benchmark configuration: pydantic models of a benchmark TOML file.

Structure is checked by pydantic (``extra="forbid"`` everywhere, so a typo in a key is an
error); component parameters (``{name = "simclr", temperature = 0.1}``) are then checked against
the ``Config`` of the plugin that provides the component. Every message starts with the path of
the offending field, e.g. ``pretrain.objectives[1].temperature: Input should be a valid number``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

from pydantic import (ConfigDict, Field, ModelWrapValidatorHandler, ValidationError,
                      ValidationInfo, field_validator, model_validator)
from pydantic_core import PydanticCustomError

from ssltk.budgets import Budget
from ssltk.errors import ConfigError, did_you_mean
from ssltk.registry import Registry, check_in_model, context_registry, format_validation_error
from ssltk.specs import ComponentSpec, ObjectiveSpec, StrictModel, content_hash

__all__ = [
    "BenchmarkConfig", "ComponentSpec", "DataConfig", "DistillConfig", "DistillSettings",
    "ExternalEncoder", "FinetuneConfig", "FinetuneSettings", "ObjectiveSpec", "OptimConfig",
    "PretrainConfig", "PretrainSettings", "StrictModel", "SynthSpec", "TargetSettings",
    "TestFrom", "check_components", "content_hash", "json_schema", "load_config",
]

Precision = Literal["auto", "fp32", "bf16"]
PRECISION_HELP = "auto: bf16 autocast on CUDA, fp32 on CPU."


class OptimConfig(StrictModel):
    """Optimiser and schedule of a training run, the ``[pretrain.optimizer]`` table.

    ``name`` and the keys this model does not define are the spec of a registered optimiser
    (``register_optimizers``: adamw, sgd, lars, sam...), validated against its ``Config`` with
    their TOML path: ``{name = "sgd", momentum = 0.9, lr = 0.1}``. The other keys (lr, schedule,
    weight decay, clipping) are the engine's and the same for every optimiser. Built by
    :func:`ssltk.engine.optim.build_optimizer`.

    Component names are checked against the ``registry`` of the validation context
    (:func:`load_config` passes its own), else against the installed plugins.
    """

    model_config = ConfigDict(extra="allow")

    name: str = Field(default="adamw", description="A registered optimizer (ssltk list-plugins "
                                                   "--kind optimizers); its parameters go in "
                                                   "this table too.")
    lr: float = Field(default=1e-3, gt=0, description="Peak learning rate (after warmup).")
    weight_decay: float = Field(default=1e-4, ge=0)
    warmup_epochs: float = Field(default=0, ge=0, description="Linear warmup length.")
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1,
                                description="Final lr of the cosine decay, as a fraction of lr.")
    grad_clip: float | None = Field(default=None, gt=0,
                                    description="Max global gradient norm (None: no clipping).")
    exclude_bias_and_norm: bool = Field(
        default=True, description="No weight decay nor LARS adaptation for biases and norms.")

    def spec(self) -> ComponentSpec:
        """The optimiser's spec: ``name`` and the parameters this table gives it."""
        return ComponentSpec(name=self.name, **(self.model_extra or {}))

    def check(self, registry: Registry, path: str) -> None:
        """Validate the optimiser's name and parameters; errors name ``{path}.key``.

        Raises:
            ConfigError: an unknown optimiser or key (did-you-mean over this table's keys and
                the optimiser's), or an invalid value.
        """
        try:
            klass = registry.get("optimizers", self.name)
        except ConfigError as exc:
            raise ConfigError(f"{path}.name: {exc}") from None
        own = [k for k in type(self).model_fields if k != "name"]
        allowed = list(klass.Config.model_fields)
        for key in self.model_extra or {}:
            if key not in allowed:
                hint = did_you_mean(key, own + allowed)
                others = [n for n in registry.names("optimizers")
                          if key in registry.get("optimizers", n).Config.model_fields]
                if others and not hint:
                    hint = f" '{key}' is a parameter of {', '.join(others)}, not of {self.name}."
                raise ConfigError(f"{path}.{key}: unknown key.{hint} Allowed: "
                                  f"{', '.join(['name', *own, *allowed])}")
        registry.validate("optimizers", self.spec(), path)

    @model_validator(mode="wrap")
    @classmethod
    def _known_optimizer(cls, data: Any, handler: ModelWrapValidatorHandler[OptimConfig],
                         info: ValidationInfo) -> OptimConfig:
        # An instance is kept as it is: it was checked against the registry it was built with
        # (or is the unvalidated default). Checking it again here, without that registry,
        # would import every installed plugin, those disabled by --disable-plugin included.
        if isinstance(data, cls):
            return data
        self = handler(data)
        registry = context_registry(info)
        check_in_model(lambda path: self.check(registry, path))
        return self


class SynthSpec(StrictModel):
    """How to build a missing store with ``ssltk synth`` (demo benchmarks)."""

    subjects: int = Field(ge=4)
    shape: list[int] = Field(min_length=2, max_length=3)
    seed: int = 0


class TargetSettings(StrictModel):
    """What to predict: shared by the TOML's ``[data]`` table and the engine's FinetuneRun."""

    target: str = Field(description="Metadata column to predict when finetuning.")
    task: Literal["classification", "regression"] = "classification"
    classes: list[str] | None = Field(
        default=None, description="Classes of `target` to keep (classification), e.g. ['CN', 'AD'].")


class DataConfig(TargetSettings):
    pretrain_store: Path | list[Path] = Field(
        description="HDF5 store(s) of unlabelled volumes to pretrain on (a list is a grid axis).")
    finetune_store: Path = Field(description="HDF5 store of the labelled cohort.")
    synth: dict[Literal["pretrain", "finetune"], SynthSpec] = Field(
        default_factory=dict, description="Build these stores with `ssltk synth` when missing.")
    ingest_hints: dict[Literal["pretrain", "finetune"], str] = Field(
        default_factory=dict, description="The command that builds a missing store, shown in "
                                          "the error (e.g. an `ssltk ingest nifti ...` line).")
    missing: Literal["error", "drop"] = Field(
        default="error", description="A row missing a value that a pretraining objective or "
                                     "anchor, or finetune.stratify_site, needs: 'error' stops "
                                     "before any work (naming the column and count); 'drop' "
                                     "leaves the row out and counts it (RUN_DIR/metadata.json).")

    def pretrain_stores(self) -> list[Path]:
        """``pretrain_store`` as a list (one store, or the grid axis)."""
        stores = self.pretrain_store
        return list(stores) if isinstance(stores, list) else [stores]

    def stores(self) -> list[tuple[str, str, Path]]:
        """(role, TOML field, path) of every store the benchmark reads, pretraining first."""
        pre = self.pretrain_stores()
        fields = ([f"data.pretrain_store[{i}]" for i in range(len(pre))]
                  if isinstance(self.pretrain_store, list) else ["data.pretrain_store"])
        return ([("pretrain", f, p) for f, p in zip(fields, pre)]
                + [("finetune", "data.finetune_store", self.finetune_store)])


class MonitorConfig(StrictModel):
    """``[pretrain.monitor]``: representation monitors of pretraining (ssltk.engine.monitor).

    They only observe (eval mode, no random draws): the weights are the same with or without
    them, so they are not part of a pretraining run's content hash.
    """

    enabled: bool = True
    every: int = Field(default=1, ge=1, description="Measure every this many epochs (and after "
                                                    "the last one); always before the first step.")
    size: int = Field(default=512, ge=2, description="Rows of the pretraining store for the "
                                                     "effective rank and the embedding std.")
    target: str | None = Field(
        default=None, description="Categorical column for the k-NN and linear probes (none: no "
                                  "probes). A benchmark fills in data.target when unset.")
    classes: list[str] | None = Field(default=None, description="Classes of `target` to keep.")
    store: Path | None = Field(
        default=None, description="Store of the labelled monitor subset (default: the "
                                  "pretraining store; a benchmark uses data.finetune_store).")
    probes: bool = Field(default=True, description="In a benchmark: probe data.target when "
                                                   "`target` is unset (false: no probes).")
    labelled_size: int = Field(default=512, ge=4, description="Labelled rows for the probes.")
    exclude_subjects: list[str] = Field(
        default_factory=list, description="Subjects whose rows the probes never read. A "
                                          "benchmark adds every test subject of every repeat.")
    proj_size: int = Field(default=128, ge=0, description="Rows (of the rank subset) on which "
                                                          "the objective's embeddings are measured; 0: "
                                                          "not measured.")
    knn_k: int = Field(default=20, ge=1, description="Neighbours of the k-NN probe.")
    knn_temperature: float = Field(default=0.07, gt=0, description="k-NN vote temperature.")
    probe_c: float = Field(default=0.1, gt=0, description="Inverse L2 strength of the linear probe.")
    folds: int = Field(default=5, ge=2, description="Cross-validation folds of the linear probe.")
    batch_size: int = Field(default=64, ge=1, description="Embedding batch size.")


class ExternalEncoder(StrictModel):
    """``[[pretrain.external]]``: an encoder trained elsewhere, a method of the grid.

    Its weights file stands for a pretraining run (:mod:`ssltk.bench.external`): every
    finetuning cell of the grid is run with it, for every seed, and reported like the others.
    The key mapping is applied in this order: ``state_key``, ``drop``, ``strip_prefix``,
    ``key_map``.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$",
                      description="Method label in the report (letters, digits, _ . + -).")
    path: Path = Field(description="The weights file (relative: to the working directory, as "
                                   "the stores): a state_dict, a checkpoint holding one, or an "
                                   "ssltk encoder.pt / checkpoint.pt.")
    backbone: ComponentSpec | None = Field(
        default=None, description="The network the weights belong to, as the `[backbone]` "
                                  "table (default: the grid's backbone).")
    state_key: str | None = Field(
        default=None, description="The sub-dict of the file holding the weights, dotted for "
                                  "nested ones ('state_dict', 'model.encoder'); default: the "
                                  "file itself if it is a state_dict, else the one of "
                                  "'state_dict', 'model', 'net', 'encoder', 'backbone' it has.")
    drop: list[str] = Field(default_factory=list,
                            description="Key prefixes to discard (e.g. a decoder, 'conv_seg.').")
    strip_prefix: str | None = Field(
        default=None, description="Removed from the start of every key that has it "
                                  "(e.g. 'module.').")
    key_map: dict[str, str] = Field(
        default_factory=dict, description="Key prefix -> replacement, the first that matches.")


class PretrainSettings(StrictModel):
    """How to pretrain: shared by the TOML's ``[pretrain]`` table and the engine's PretrainRun."""

    hash_exclude: ClassVar[frozenset[str]] = frozenset({"monitor"})

    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=16, ge=2, description="Global batch, split across ranks.")
    # Built unvalidated: a default must not import plugins (a disabled one included); the
    # registry that runs it checks the name (check_components, build_optimizer).
    optimizer: OptimConfig = Field(default_factory=lambda: OptimConfig.model_construct())
    precision: Precision = Field(default="auto", description=PRECISION_HELP)
    channels_last: bool = False
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)


class PretrainConfig(PretrainSettings):
    objectives: list[ObjectiveSpec] = Field(
        default_factory=list, description="A grid axis (may be empty when [[pretrain.external]] "
                                          "gives the encoders).")
    exclude_test: bool = Field(
        default=False, description="Pretrain on each store minus every subject that is a "
                                   "finetuning test subject in any seed and repeat (no label "
                                   "leakage through an anchor or supervised head).")
    cache_dir: Path | None = Field(
        default=None, description="Folder of finished pretrainings, one sub-folder per content "
                                  "hash, shared by every benchmark that names it (default: "
                                  "OUTPUT_DIR/.pretrain-cache).")
    augmentations: list[ComponentSpec] | None = Field(
        default=None, description="Pipeline applied to make each view, in order; "
                                  "None uses ssltk.augment.default_pipeline (DEFAULT_PIPELINE "
                                  "in 3D, DEFAULT_PIPELINE_2D in 2D).")
    augmentation_sets: dict[str, list[ComponentSpec]] | None = Field(
        default=None, description="Named pipelines: a grid axis (replaces `augmentations`).")
    external: list[ExternalEncoder] = Field(
        default_factory=list, description="Encoders trained elsewhere: more methods of the "
                                          "grid (`[[pretrain.external]]`).")


class FinetuneSettings(StrictModel):
    """How to finetune: shared by the TOML's ``[finetune]`` table and the engine's FinetuneRun."""

    epochs: int = Field(default=20, ge=1, description="Full finetuning only.")
    batch_size: int = Field(default=16, ge=1)
    lr: float = Field(default=1e-3, gt=0, description="Head lr (full finetuning).")
    encoder_lr_ratio: float = Field(default=0.1, gt=0, description="Encoder lr = lr * this.")
    weight_decay: float = Field(default=1e-4, ge=0, description="AdamW weight decay (full "
                                                                 "finetuning).")
    patience: int = Field(default=5, ge=1, description="Early-stopping epochs (full finetuning).")
    class_weighting: bool = False
    augmentations: list[ComponentSpec] = Field(
        default_factory=list, description="Applied to training batches in full finetuning.")
    precision: Precision = Field(default="auto", description=PRECISION_HELP)


class TestFrom(StrictModel):
    """``[finetune] test_from``: the store's own test rows, e.g. ``{column = "split",
    value = "test"}``."""

    column: str = Field(description="Metadata column of the store.")
    value: str = Field(description="Rows with this value are the test set of every repeat.")


BaselineName = Literal["random_init", "random_init_bn", "raw_input"]
BASELINE_NAMES: tuple[str, ...] = get_args(BaselineName)


class FinetuneConfig(FinetuneSettings):
    modes: list[Literal["frozen", "full"]] = Field(default_factory=lambda: ["frozen"], min_length=1)
    baselines: list[BaselineName] = Field(
        default_factory=lambda: list(BASELINE_NAMES),
        description="Baseline rows of the grid: random_init (the untrained encoder: a frozen "
                    "probe, or supervised training in full mode), random_init_bn and raw_input "
                    "(frozen mode only; docs/benchmarks.md#baselines).")
    label_fractions: list[float] = Field(
        default_factory=list, description="Fractions of the training pool (stratified).")
    n_per_class: list[int] = Field(
        default_factory=list, description="Subjects per class (balanced).")
    n_total: list[int] = Field(
        default_factory=list, description="Subjects in total (stratified by class).")
    repeats: int = Field(default=1, ge=1, description="Split draws per seed.")
    val_fraction: float = Field(default=0.2, gt=0, lt=0.5, description="Of the labelled pool "
                                "(with test_from: of the subjects not in the test set).")
    test_fraction: float = Field(default=0.3, gt=0, lt=0.8, description="Of the labelled pool.")
    stratify_site: str | None = Field(default=None, description="Also stratify splits by this column.")
    test_from: TestFrom | None = Field(
        default=None, description="Take the store's rows with this metadata value as the test "
                                  "set of every repeat (replaces test_fraction); validation "
                                  "and budgets are drawn from the other subjects.")
    save_models: Literal["none", "best", "all"] = Field(
        default="none", description="Save model bundles under RUN_DIR/models: 'best' keeps, per "
                                    "method and mode, the cell with the best validation score at "
                                    "the largest budget; 'all' keeps every cell's.")

    @field_validator("baselines", mode="before")
    @classmethod
    def _known_baselines(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value  # pydantic's own error names the type
        for i, name in enumerate(value):
            if isinstance(name, str) and name not in BASELINE_NAMES:
                raise PydanticCustomError("baseline", "unknown baseline '{name}'.{hint} "
                                          "Available: {names}",
                                          {"name": name, "names": ", ".join(BASELINE_NAMES),
                                           "hint": did_you_mean(name, BASELINE_NAMES)})
            if name in value[:i]:
                raise PydanticCustomError("baseline", "'{name}' is listed twice; list each "
                                          "baseline once", {"name": name})
        return value

    @model_validator(mode="after")
    def _budgets(self) -> FinetuneConfig:
        if not self.label_fractions and not self.n_per_class and not self.n_total:
            raise ValueError("give label_fractions, n_per_class and/or n_total")
        for f in self.label_fractions:
            if not 0 < f <= 1:
                raise ValueError(f"label_fractions must be in (0, 1], got {f}")
        if self.test_from is not None and "test_fraction" in self.model_fields_set:
            raise ValueError("test_fraction is not used with test_from (the test set is the "
                             "store's own); remove one of them")
        return self

    def budgets(self) -> list[Budget]:
        """Every label budget of the grid, in TOML order, each naming its field."""
        axes = (("n_per_class", "n_per_class", self.n_per_class),
                ("n_total", "n_total", self.n_total),
                ("fraction", "label_fractions", self.label_fractions))
        return [Budget(kind, value, source=f"finetune.{key}[{i}]")
                for kind, key, values in axes for i, value in enumerate(values)]


class DistillSettings(StrictModel):
    """How to distil: shared by the TOML's ``[distill]`` table and the engine's DistillRun.

    SimCLRv2's third stage (Chen et al., NeurIPS 2020): a finetuned teacher labels the task's
    training pool with ``softmax(z / temperature)``; a student learns those soft targets.
    """

    temperature: float = Field(default=1.0, gt=0, description="tau of the teacher's and the "
                                                                "student's softmax.")
    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=16, ge=1)
    lr: float = Field(default=1e-3, gt=0, description="AdamW lr of the whole student.")
    weight_decay: float = Field(default=1e-4, ge=0)
    patience: int | None = Field(
        default=None, ge=1, description="None: train every epoch and keep the last (the paper "
                                        "selects nothing on labels); a number: early stopping "
                                        "on the validation score, as in full finetuning.")
    label_weight: float = Field(
        default=0.0, ge=0, le=1, description="Weight of the cross-entropy on the budget's "
                                             "labelled rows: (1 - w) distillation + w CE. 0 is "
                                             "the paper's choice when labels are few.")
    init: Literal["random", "pretrained"] = Field(
        default="random", description="random: a freshly initialised student; pretrained: "
                                      "the encoder the teacher was finetuned from (student "
                                      "backbone must then be the teacher's).")


class DistillConfig(DistillSettings):
    """The ``[distill]`` table: which finetuning cells are teachers, and the student."""

    student: ComponentSpec | None = Field(
        default=None, description="Backbone of the student (default: the teacher's).")
    methods: list[str] | None = Field(
        default=None, description="Methods whose cells are teachers (default: every method, "
                                  "scratch included).")
    modes: list[Literal["frozen", "full"]] = Field(
        default_factory=lambda: ["full"], min_length=1,
        description="Finetuning modes whose cells are teachers.")


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
    distill: DistillConfig | None = Field(
        default=None, description="SimCLRv2 distillation after finetuning (none: no "
                                  "distillation rows).")
    report: ReportConfig = Field(default_factory=ReportConfig)

    @model_validator(mode="after")
    def _gradcam_needs_models(self) -> BenchmarkConfig:
        if self.report.gradcam and self.finetune.save_models == "none":
            raise ValueError("report.gradcam needs saved models: set finetune.save_models = "
                             "\"best\" (or \"all\")")
        return self

    @model_validator(mode="after")
    def _some_encoder(self) -> BenchmarkConfig:
        if not self.pretrain.objectives and not self.pretrain.external:
            raise ValueError("pretrain.objectives: give at least one objective or a "
                             "[[pretrain.external]] encoder")
        return self

    @model_validator(mode="after")
    def _budgets_fit_task(self) -> BenchmarkConfig:
        if self.data.task == "regression" and self.finetune.n_per_class:
            raise ValueError("finetune.n_per_class: a regression target has no classes; use "
                             "finetune.n_total or finetune.label_fractions")
        return self

    def pretrain_cache(self) -> Path:
        """Where finished pretrainings are kept, by content hash (``pretrain.cache_dir``)."""
        return self.pretrain.cache_dir or self.output_dir / ".pretrain-cache"

    @model_validator(mode="after")
    def _distill_fits(self) -> BenchmarkConfig:
        if self.distill is None:
            return self
        if self.data.task != "classification":
            raise ValueError("distill: needs data.task = \"classification\" (soft targets "
                             "are class probabilities); remove [distill]")
        missing = [m for m in self.distill.modes if m not in self.finetune.modes]
        if missing:
            raise ValueError(f"distill.modes: '{missing[0]}' is not in finetune.modes "
                             f"{self.finetune.modes}; add it there or remove it here")
        student = self.distill.student
        if (self.distill.init == "pretrained" and student is not None
                and student.model_dump() != self.backbone.model_dump()):
            raise ValueError("distill.init: 'pretrained' needs the teacher's backbone; drop "
                             "distill.student or set distill.init = \"random\"")
        return self

    @model_validator(mode="after")
    def _monitor_probes(self) -> BenchmarkConfig:
        """The pretraining monitors probe the benchmark's own task unless told otherwise."""
        m, d = self.pretrain.monitor, self.data
        if m.probes and m.target is None and d.task == "classification":
            m.target, m.classes = d.target, d.classes
            m.store = m.store or d.finetune_store
        return self


def check_components(config: BenchmarkConfig, registry: Registry) -> None:
    """Validate every component's name and parameters against the installed plugins."""
    specs: list[tuple[str, str, ComponentSpec]] = [("backbones", "backbone", config.backbone)]
    if config.distill is not None and config.distill.student is not None:
        specs.append(("backbones", "distill.student", config.distill.student))
    pipelines = {"pretrain.augmentations": config.pretrain.augmentations or []}
    pipelines |= {f"pretrain.augmentation_sets.{label}": augs
                  for label, augs in (config.pretrain.augmentation_sets or {}).items()}
    pipelines["finetune.augmentations"] = config.finetune.augmentations
    specs += [("augmentations", f"{path}[{i}]", spec)
              for path, augs in pipelines.items() for i, spec in enumerate(augs)]
    specs += [("objectives", f"pretrain.objectives[{i}]", spec)
              for i, spec in enumerate(config.pretrain.objectives)]
    specs += [("backbones", f"pretrain.external[{i}].backbone", ext.backbone)
              for i, ext in enumerate(config.pretrain.external) if ext.backbone is not None]
    for kind, path, spec in specs:
        registry.validate(kind, spec, path)
    config.pretrain.optimizer.check(registry, "pretrain.optimizer")


def load_config(path: str | Path, registry: Registry | None = None) -> BenchmarkConfig:
    """Read and validate a benchmark TOML; with a registry, check every component too.

    Raises:
        ConfigError: one line, ``FILE: field.path: what is wrong``.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the benchmark as "
                          f"UTF-8 TOML") from None
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    try:
        config = BenchmarkConfig.model_validate(raw, context={"registry": registry})
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
