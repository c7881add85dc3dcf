"""``[finetune] test_from``: the store's own test rows are the test set of every repeat."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ssltk.bench.cohort import load_cohort
from ssltk.bench.results import read_results
from ssltk.bench.runner import prepare
from ssltk.cli import app
from ssltk.config import load_config
from ssltk.errors import ConfigError
from ssltk.store import VolumeStore

TEST_FROM = {"column": "split", "value": "test"}


def _png(path, dark_band: bool, seed: int) -> None:
    """A 28 px "brain": a bright disc, AD with a dark band through it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:28j, -1:1:28j]
    img = (np.hypot(yy, xx) < 0.8) * (150 + 20 * rng.random((28, 28)))
    if dark_band:
        img[12:16] *= 0.4
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.astype(np.uint8)).save(path)


def image_tree(root, n_train=8, n_test=3, shared_subject=False):
    """``root/<split>/<class>/*.png``: n per class in train, fewer in test."""
    for s, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        for c, label in enumerate(("CN", "AD")):
            for i in range(n):
                name = f"{split}{label}{i}_x" if not shared_subject else f"s{label}{i}_{split}"
                _png(root / split / label / f"{name}.png", label == "AD", 100 * s + 10 * c + i)
    return root


def ingest(src, out, *extra):
    result = CliRunner().invoke(app, ["ingest", "images", str(src), "--out", str(out),
                                      "--size", "28", "28", *extra])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def split_store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("splits")
    return ingest(image_tree(folder / "src"), folder / "alz.h5")


def test_rows(store_path) -> set[int]:
    with VolumeStore.open(store_path) as store:
        return set(np.flatnonzero(np.asarray(store.meta["split"]) == "test").tolist())


test_rows.__test__ = False  # a helper, not a test


def write(make_benchmark, folder, store, finetune=None, **changes):
    finetune = {"test_fraction": None, "test_from": TEST_FROM, "repeats": 2} | (finetune or {})
    return make_benchmark(folder / "alz.toml", store, output_dir=folder / "runs",
                          data={"target": "label"}, finetune=finetune, **changes)


def test_every_repeat_tests_on_exactly_the_store_test_rows(tmp_path, split_store,
                                                           make_benchmark):
    cfg = write(make_benchmark, tmp_path, split_store, finetune={"repeats": 3})
    result = CliRunner().invoke(app, ["run", str(cfg)])
    assert result.exit_code == 0, result.output
    records = read_results(tmp_path / "runs" / "tiny" / "results.jsonl")
    wanted = test_rows(split_store)
    assert len(wanted) == 6
    # 3 repeats x (scratch + simclr) cells
    assert len(records) == 6 and {r["method"] for r in records} == {"scratch", "simclr"}
    for rec in records:
        assert set(rec["predictions"]["rows"]) == wanted and rec["n_test"] == 6
    assert len({r["split_hash"] for r in records}) == 3  # one split per repeat
    _, grid = prepare(cfg)
    for cell in grid.cells:
        assert set(cell.run.test_rows) == wanted
        assert not (set(cell.run.train_rows) | set(cell.run.val_rows)) & wanted


def test_validation_and_budgets_never_draw_a_test_row(tmp_path, split_store, make_benchmark):
    config = load_config(write(make_benchmark, tmp_path, split_store,
                               finetune={"label_fractions": [1.0]}))
    cohort = load_cohort(config)
    wanted = test_rows(split_store)
    vals = set()
    for seed in range(6):
        for repeat in range(3):
            for budget in config.finetune.budgets():
                split = cohort.split(config.finetune, budget, seed, repeat)
                train, val, test = (set(side) for side in split.rows)
                assert test == wanted
                assert not val & wanted and not train & wanted and not train & val
                assert len(val) == 4  # val_fraction 0.25 of each class's 8 non-test subjects
                vals.add(frozenset(val))
    assert len(vals) > 1  # validation is still drawn per seed and repeat


def test_split_hash_changes_with_test_from(tmp_path, split_store, make_benchmark):
    """The same subjects on each side, but another test_from: another hash."""
    config = load_config(write(make_benchmark, tmp_path, split_store))
    budget = config.finetune.budgets()[0]
    base = load_cohort(config).split(config.finetune, budget, 0).hash
    other = config.model_copy(deep=True)
    other.finetune.test_from.column = "SPLIT"  # not in the store: an error, not a silent change
    with pytest.raises(ConfigError, match="finetune.test_from.column: store .* has no column "
                                          "'SPLIT' \\(it has .*split"):
        load_cohort(other)
    cohort = load_cohort(config)
    cohort.test_from = {"column": "fold", "value": "test"}  # another column, the same rows
    assert cohort.split(config.finetune, budget, 0).hash != base
    cohort.test_from = None  # the same subjects without test_from
    assert cohort.split(config.finetune, budget, 0).hash != base


def test_missing_value_lists_the_values_present(tmp_path, split_store, make_benchmark):
    cfg = write(make_benchmark, tmp_path, split_store,
                finetune={"test_from": {"column": "split", "value": "held_out"}})
    result = CliRunner().invoke(app, ["run", str(cfg)])
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and "finetune.test_from.value" in line
    assert "'held_out'" in line and "'test', 'train'" in line


def test_subject_on_both_sides_is_leakage(tmp_path, make_benchmark):
    src = image_tree(tmp_path / "src", n_train=4, n_test=2, shared_subject=True)
    store = ingest(src, tmp_path / "leak.h5", "--subject-regex", "^(s[A-Z]+\\d)_")
    cfg = write(make_benchmark, tmp_path, store)
    result = CliRunner().invoke(app, ["run", str(cfg)])
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and "finetune.test_from:" in line
    assert "4 subject(s)" in line and "both with and without split = 'test'" in line
    assert "sAD0" in line


def test_test_fraction_with_test_from_is_an_error(tmp_path, split_store, make_benchmark):
    cfg = write(make_benchmark, tmp_path, split_store, finetune={"test_fraction": 0.3})
    with pytest.raises(ConfigError, match="test_fraction is not used with test_from"):
        load_config(cfg)
    cfg = write(make_benchmark, tmp_path, split_store,
                finetune={"test_from": {"column": "split", "value": "test", "valeu": 1}})
    with pytest.raises(ConfigError, match="finetune.test_from.valeu"):
        load_config(cfg)
