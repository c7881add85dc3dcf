"""Everything a benchmark needs, checked before anything runs (one-line errors)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ssltk.bench.grid import objective_columns
from ssltk.config import BenchmarkConfig
from ssltk.errors import ConfigError
from ssltk.store import VolumeStore

log = logging.getLogger(__name__)


def benchmark_stores(config: BenchmarkConfig) -> list[tuple[str, str, Path]]:
    """(role, field path, store path) of every store the benchmark reads."""
    pre = config.data.pretrain_store
    out = []
    if isinstance(pre, list):
        out += [("pretrain", f"data.pretrain_store[{i}]", p) for i, p in enumerate(pre)]
    else:
        out.append(("pretrain", "data.pretrain_store", pre))
    out.append(("finetune", "data.finetune_store", config.data.finetune_store))
    return out


def build_synth(path: Path, spec) -> None:
    """Build a synthetic store atomically (a killed build leaves no half store at ``path``)."""
    from ssltk.store.synth import make_cohort

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".building" + path.suffix)
    log.info("building synthetic store %s (%d subjects, shape %s)", path, spec.subjects,
             spec.shape)
    make_cohort(tmp, subjects=spec.subjects, shape=tuple(spec.shape), seed=spec.seed,
                overwrite=True)
    os.replace(tmp, path)


def ensure_store(role: str, field: str, path: Path, config: BenchmarkConfig,
                 build_missing: bool) -> None:
    if path.exists():
        return
    synth = config.data.synth.get(role)
    if synth is not None and build_missing:
        build_synth(path, synth)
        return
    hint = config.data.ingest_hints.get(role)
    how = f"build it with: {hint}" if hint else "build it with `ssltk ingest` or `ssltk synth`"
    raise ConfigError(f"{field}: store {path} does not exist; {how}")


def check_columns(config: BenchmarkConfig) -> None:
    """The target and every anchor column must exist in the stores that need them."""
    with VolumeStore.open(config.data.finetune_store) as store:
        if config.data.target not in store.columns:
            raise ConfigError(
                f"data.target: store {config.data.finetune_store} has no column "
                f"'{config.data.target}' (it has {', '.join(store.columns)})")
    for _, field, path in benchmark_stores(config):
        if field.startswith("data.finetune"):
            continue
        with VolumeStore.open(path) as store:
            for i, objective in enumerate(config.pretrain.objectives):
                for col in objective_columns(objective):
                    if col not in store.columns:
                        raise ConfigError(
                            f"pretrain.objectives[{i}].anchor: store {path} has no column "
                            f"'{col}' (it has {', '.join(store.columns)})")


def check_data(config: BenchmarkConfig, build_missing: bool = True) -> None:
    """Stores present (or built), columns present. Budgets are checked by the grid."""
    for role, field, path in benchmark_stores(config):
        ensure_store(role, field, Path(path), config, build_missing)
    check_columns(config)
