"""Nothing reads a test subject's label before that subject's test (issue 21, item 3).

Checked by construction: the test subjects' labels are poisoned (flipped) after the grid is
drawn, and every step that runs before a test -- the pretraining monitors' probes, the frozen
probe's choice of C, full finetuning's early stopping -- must give exactly the same numbers.
The monitors must also never ask for a test subject's label at all, in any repeat.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssltk.bench.cohort import all_test_subjects, load_cohort
from ssltk.bench.grid import expand
from ssltk.config import BenchmarkConfig
from ssltk.engine import finetuning, monitor
from ssltk.engine.finetuning import finetune
from ssltk.engine.monitor import Monitor
from ssltk.store import ColumnSpec, StoreWriter, VolumeStore

COLUMNS = {"subject_id": ColumnSpec("id"), "session": ColumnSpec("id"),
           "age": ColumnSpec("continuous", unit="years"), "sex": ColumnSpec("categorical"),
           "diagnosis": ColumnSpec("categorical")}

BACKBONE = {"name": "resnet10", "widen_factor": 0.25, "norm": "group"}


def _store(path, n=24, seed=0):
    """``n`` subjects, alternately CN and AD (AD darker in a band); every third has a second
    session, so one subject owns several rows."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 16)] * 3, indexing="ij"))
    brain = (np.sqrt((grid ** 2).sum(0)) < 0.8).astype(np.float32)
    with StoreWriter.create(path, shape=(1, 16, 16, 16), columns=COLUMNS, dtype="float32",
                            compression="none") as w:
        for i in range(n):
            dx = ["CN", "AD"][i % 2]
            for session in range(1 + (i % 3 == 0)):
                vol = brain * (0.6 + 0.05 * rng.standard_normal((16, 16, 16)))
                if dx == "AD":
                    vol *= 1 - 0.5 * (np.abs(grid[0]) < 0.25)
                w.append(np.clip(vol, 0, 1)[None].astype(np.float32),
                         {"subject_id": f"sub-{i:02d}", "session": f"ses-{session + 1}",
                          "age": 60.0 + i, "sex": "F", "diagnosis": dx})
    return path


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    path = _store(tmp_path_factory.mktemp("leak") / "cohort.h5")
    raw = {"name": "leak", "seeds": [0, 1], "data": {
        "pretrain_store": str(path), "finetune_store": str(path), "target": "diagnosis",
        "classes": ["CN", "AD"]},
        "backbone": BACKBONE, "pretrain": {"objectives": [{"name": "simclr"}],
                                           "monitor": {"knn_k": 3, "proj_size": 0}},
        "finetune": {"modes": ["frozen", "full"], "n_per_class": [3], "repeats": 2,
                     "test_fraction": 0.2, "epochs": 3, "patience": 1}}
    return BenchmarkConfig.model_validate(raw), path


def _subjects(path, rows) -> set[str]:
    with VolumeStore.open(path) as store:
        ids = np.asarray(store.meta["subject_id"]).astype(str)
    return set(ids[list(rows)].tolist())


def _poisoning(monkeypatch, module, path, subjects: set[str], asked: list | None = None):
    """Make ``module.load_targets`` flip the labels of ``subjects``' rows (and log, in
    ``asked``, every row whose label is read through ``values``)."""
    real = module.load_targets
    with VolumeStore.open(path) as store:
        poisoned = np.isin(np.asarray(store.meta["subject_id"]).astype(str), list(subjects))

    def load(*args, **kwargs):
        targets = real(*args, **kwargs)
        targets.labels = np.where(poisoned, 1 - targets.labels, targets.labels)
        values = targets.values
        targets.values = lambda rows: (asked.extend(rows) if asked is not None else None,
                                       values(rows))[1]
        return targets

    monkeypatch.setattr(module, "load_targets", load)


def test_the_held_out_set_is_every_test_subject_of_every_repeat(bench):
    config, path = bench
    grid = expand(config)
    tested = set().union(*(_subjects(path, c.run.test_rows) for c in grid.cells))
    assert tested == all_test_subjects(config, load_cohort(config))
    assert len(tested) > len(grid.cells[0].run.test_rows)  # repeats differ: a real union
    for job in grid.pretrain_jobs:
        assert set(job.run.monitor.exclude_subjects) == tested
    # ...and never part of what identifies the pretraining (its checkpoint is shared)
    assert grid.pretrain_jobs[0].run.content_hash() == \
        grid.pretrain_jobs[0].run.model_copy(update={"monitor": config.pretrain.monitor}
                                             ).content_hash()


def _measure(run, path):
    from ssltk.registry import get_registry

    torch.manual_seed(0)
    backbone = get_registry().build("backbones", BACKBONE, "backbone", in_channels=1,
                                    spatial_dims=3)
    mon = Monitor(run.monitor, VolumeStore.open(path), np.arange(10), torch.device("cpu"))
    return mon, mon.measure(type("Objective", (), {"backbone": backbone})())


def test_the_monitors_never_read_a_test_subjects_label(bench, monkeypatch):
    config, path = bench
    job = expand(config).pretrain_jobs[0]
    held_out = set(job.run.monitor.exclude_subjects)
    _, clean = _measure(job.run, path)
    asked: list[int] = []
    _poisoning(monkeypatch, monitor, path, held_out, asked)
    mon, poisoned = _measure(job.run, path)
    assert asked and not (_subjects(path, asked) & held_out)
    assert not (set(mon.labelled.subjects.tolist()) & held_out)
    for key in ("knn_auc", "linear_auc", "rank"):
        assert poisoned[key] == clean[key]


@pytest.mark.numerics
def test_the_probes_leave_one_subject_out():
    # Two rows per subject, identical embeddings within a subject, labels random across
    # subjects: leave-one-row-out k-NN would find each row's twin and score 1.0.
    rng = np.random.default_rng(0)
    z = np.repeat(rng.standard_normal((20, 8)), 2, axis=0)
    y = np.repeat(rng.integers(0, 2, 20), 2)
    groups = np.repeat(np.arange(20), 2)
    by_row = monitor.probe_metrics(monitor.knn_scores(z, y, 2, k=1), y)[0]
    by_subject = monitor.probe_metrics(monitor.knn_scores(z, y, 2, k=1, groups=groups), y)[0]
    assert by_row == 1.0 and by_subject < 0.8
    lin = monitor.linear_probe_scores(z, y, 2, folds=4, groups=groups)
    assert monitor.probe_metrics(lin, y)[0] < 0.8


@pytest.mark.parametrize("mode", ["frozen", "full"])
def test_probe_selection_and_early_stopping_read_no_test_label(bench, monkeypatch, mode):
    config, path = bench
    cell = next(c for c in expand(config).cells if c.mode == mode and c.repeat == 1)
    test = _subjects(path, cell.run.test_rows)
    assert not test & _subjects(path, cell.run.train_rows + cell.run.val_rows)
    clean = finetune(cell.run, device="cpu")
    _poisoning(monkeypatch, finetuning, path, test)
    poisoned = finetune(cell.run, device="cpu")
    assert poisoned.history == clean.history  # C / epochs chosen on validation alone
    assert poisoned.best_epoch == clean.best_epoch
    assert poisoned.predictions["y_true"] != clean.predictions["y_true"]  # the poison is real
