"""Everything a benchmark needs, checked before anything runs (one-line errors)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ssltk.bench.external import check_externals
from ssltk.bench.grid import grid_external_jobs
from ssltk.bench.metadata import column_needs
from ssltk.config import BenchmarkConfig, SynthSpec
from ssltk.errors import ConfigError
from ssltk.registry import Registry
from ssltk.store import VolumeStore

log = logging.getLogger(__name__)


def build_synth(path: Path, spec: SynthSpec) -> None:
    """Build a synthetic store atomically (a killed build leaves no half store at ``path``)."""
    from ssltk.store.synth import make_cohort

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".building" + path.suffix)
    log.info("building synthetic store %s (%d subjects, shape %s)", path, spec.subjects,
             spec.shape)
    make_cohort(tmp, subjects=spec.subjects, shape=tuple(spec.shape), seed=spec.seed,
                overwrite=True)
    os.replace(tmp, path)


def missing_store_hint(config: BenchmarkConfig, role: str) -> str:
    """How a missing store of ``role`` (pretrain, finetune) gets built."""
    if config.data.synth.get(role) is not None:
        return "it is built automatically with `ssltk synth` on the first run"
    hint = config.data.ingest_hints.get(role)
    return f"build it with: {hint}" if hint else "build it with `ssltk ingest` or `ssltk synth`"


def ensure_store(role: str, field: str, path: Path, config: BenchmarkConfig,
                 build_missing: bool) -> None:
    """Build a missing synthetic store, or fail naming the command that builds it."""
    if path.exists():
        return
    synth = config.data.synth.get(role)
    if synth is not None and build_missing:
        build_synth(path, synth)
        return
    raise ConfigError(f"{field}: store {path} does not exist; {missing_store_hint(config, role)}")


def check_columns(config: BenchmarkConfig, registry: Registry) -> None:
    """The target and every column an objective reads must exist in the stores that need them."""
    with VolumeStore.open(config.data.finetune_store) as store:
        if config.data.target not in store.columns:
            raise ConfigError(
                f"data.target: store {config.data.finetune_store} has no column "
                f"'{config.data.target}' (it has {', '.join(store.columns)})")
    for path in config.data.pretrain_stores():
        with VolumeStore.open(path) as store:
            for need in column_needs(config, store, registry):
                if need.column not in store.columns:
                    raise ConfigError(f"{need.field}: store {path} has no column "
                                      f"'{need.column}' (it has {', '.join(store.columns)})")


def check_data(config: BenchmarkConfig, registry: Registry, build_missing: bool = True) -> None:
    """Stores present (or built), columns present, external encoders fit their backbones.
    Budgets are checked by the grid."""
    for role, field, path in config.data.stores():
        ensure_store(role, field, Path(path), config, build_missing)
    check_columns(config, registry)
    check_externals(config, registry, grid_external_jobs(config))
