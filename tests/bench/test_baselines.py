"""The baseline rows of a grid: random_init_bn and raw_input beside scratch, paired, resumable."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ssltk.bench.baselines import SAME_AS_RANDOM_INIT
from ssltk.bench.results import read_results
from ssltk.bench.runner import prepare, run_benchmark
from ssltk.cli import app
from ssltk.engine.checkpoint import load_checkpoint
from ssltk.errors import ConfigError

BATCH_NORM = {"name": "resnet10", "widen_factor": 0.25, "norm": "batch"}


@pytest.fixture(scope="module")
def store(tmp_path_factory, make_tiny_store):
    return make_tiny_store(tmp_path_factory.mktemp("baselines") / "tiny.h5", (1, 16, 16, 16),
                           n=24)


@pytest.fixture(scope="module")
def write(make_benchmark, store):
    """``write(folder, finetune={...}, **changes)``: the tiny benchmark of tests/conftest.py,
    two seeds, frozen and full modes."""

    def write_config(folder, finetune=None, **changes):
        finetune = {"modes": ["frozen", "full"], "epochs": 1, "baselines": None,
                    **(finetune or {})}
        folder.mkdir(parents=True, exist_ok=True)
        return make_benchmark(folder / "tiny.toml", store, output_dir=folder / "runs",
                              finetune=finetune, **{"seeds": [0, 1], **changes})

    return write_config


def test_every_frozen_split_gets_both_baselines_paired_with_the_other_methods(tmp_path, write):
    config, grid = prepare(write(tmp_path, finetune={"repeats": 2}))
    frozen = [c for c in grid.cells if c.mode == "frozen"]
    methods = ["scratch", "random_init_bn", "raw_input", "simclr"]
    assert [c.method for c in frozen[:4]] == methods  # the first split's row
    assert {c.method for c in grid.cells if c.mode == "full"} == {"scratch", "simclr"}
    assert grid.methods == methods
    by_split: dict[tuple, dict[str, str]] = {}
    for cell in frozen:
        by_split.setdefault((cell.seed, cell.repeat, cell.budget.label), {})[cell.method] = \
            cell.split_hash
    assert len(by_split) == 2 * 2  # seeds x repeats (one budget)
    for hashes in by_split.values():
        assert sorted(hashes) == sorted(methods) and len(set(hashes.values())) == 1
    assert len({c.key for c in grid.cells}) == len(grid.cells) == 4 * 4 + 2 * 4
    bn = [c for c in frozen if c.method == "random_init_bn"]
    assert {c.pretrain.seed for c in bn} == {0, 1}  # one fitted encoder per seed
    assert all(c.run.features == "raw_input" for c in frozen if c.method == "raw_input")
    assert all(c.run.features == "encoder" for c in grid.cells if c.method != "raw_input")


def test_the_baselines_leave_the_other_cells_keys_as_they_were(tmp_path, write):
    """A cell's key is the hash of its run without the encoder path, and of its pretraining:
    the ``features`` field, added with the raw input, stays out of it at its default."""
    _, grid = prepare(write(tmp_path))
    _, without = prepare(write(tmp_path / "b", finetune={"baselines": ["random_init"]}))
    assert {c.key for c in without.cells} < {c.key for c in grid.cells}
    for cell in without.cells:
        ident = {"finetune": cell.run.model_dump(mode="json", exclude={"encoder", "features"}),
                 "pretrain": cell.pretrain.content_hash() if cell.pretrain else None}
        text = json.dumps(ident, sort_keys=True, separators=(",", ":"))
        assert cell.key == hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize("baselines, methods", [
    ([], {"simclr"}),
    (["random_init"], {"scratch", "simclr"}),
    (["raw_input"], {"raw_input", "simclr"}),
    (["random_init_bn", "random_init"], {"scratch", "random_init_bn", "simclr"}),
])
def test_finetune_baselines_chooses_the_rows(tmp_path, write, baselines, methods):
    _, grid = prepare(write(tmp_path, finetune={"baselines": baselines}))
    assert {c.method for c in grid.cells} == methods


def test_a_grid_without_frozen_mode_has_only_scratch(tmp_path, write):
    _, grid = prepare(write(tmp_path, finetune={"modes": ["full"]}))
    assert {c.method for c in grid.cells} == {"scratch", "simclr"} and not grid.baseline_jobs


@pytest.mark.parametrize("baselines, expected", [
    (["raw_inptu"], "finetune.baselines: unknown baseline 'raw_inptu'. Did you mean "
                    "'raw_input'? Available: random_init, random_init_bn, raw_input"),
    (["raw_input", "raw_input"], "finetune.baselines: 'raw_input' is listed twice; list each "
                                 "baseline once"),
])
def test_an_unknown_baseline_is_one_line_with_a_suggestion(tmp_path, write, baselines,
                                                           expected):
    with pytest.raises(ConfigError) as err:
        prepare(write(tmp_path, finetune={"baselines": baselines}))
    assert str(err.value).endswith(expected) and "\n" not in str(err.value)


def test_dry_run_lists_the_baselines(tmp_path, write, store):
    result = CliRunner().invoke(app, ["run", str(write(tmp_path)), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "finetuning: 12 cells" in result.output  # 2 seeds x (4 frozen + 2 full)
    assert "baseline scratch (frozen, full): the untrained encoder of each seed; 4 cells" \
        in result.output
    assert (f"baseline random_init_bn (frozen): the untrained encoder of each seed, its "
            f"batch-norm statistics fitted on {store} (no gradient step); 2 cells") \
        in result.output
    assert ("baseline raw_input (frozen): the input average-pooled to 16x16x16 per channel "
            "(4096 values); 2 cells") in result.output


def test_distilling_the_raw_input_is_refused(tmp_path, write):
    cfg = write(tmp_path, distill={"methods": ["raw_input"], "modes": ["frozen"]})
    with pytest.raises(ConfigError, match=r"distill.methods\[0\]: 'raw_input' has no model"):
        prepare(cfg)


def frozen_rows(root) -> dict[tuple, dict]:
    return {(r["method"], r["seed"], r["budget_label"]): r
            for r in read_results(root / "results.jsonl") if r["mode"] == "frozen"}


@pytest.fixture(scope="module")
def batch_norm_run(tmp_path_factory, write):
    """A frozen grid with a batch-norm backbone, run once."""
    folder = tmp_path_factory.mktemp("bn")
    cfg = write(folder, finetune={"modes": ["frozen"]}, backbone=BATCH_NORM)
    return cfg, run_benchmark(cfg)


@pytest.mark.slow
def test_random_init_bn_rows_probe_the_seeds_init_with_fitted_statistics(batch_norm_run):
    _, root = batch_norm_run
    rows = frozen_rows(root)
    assert len(rows) == 2 * 4
    for seed in (0, 1):
        bn = rows[("random_init_bn", seed, "2/class")]
        assert bn["baseline"] == {"bn_layers": 12, "pool_store": bn["baseline"]["pool_store"],
                                  "pool_rows": 24, "batches": 3, "same_as_random_init": False}
        assert bn["split_hash"] == rows[("scratch", seed, "2/class")]["split_hash"]
        assert bn["pretrain"]["baseline"] == "random_init_bn" and bn["pretrain"]["seed"] == seed
        # the encoder is the scratch init of the seed, only its BN statistics changed
        path = root / "pretrain" / f"random_init_bn-seed{seed}-{bn['pretrain']['hash'][:8]}"
        state = load_checkpoint(path / "encoder.pt")[0]["backbone"]
        assert torch.equal(state["net.conv1.weight"], scratch_init(seed)["net.conv1.weight"])
        assert not torch.allclose(state["net.bn1.running_var"], torch.ones(16), atol=1e-2)
    raw = rows[("raw_input", 0, "2/class")]
    assert raw["baseline"] == {"features": 4096, "grid": [16, 16, 16]}
    assert raw["pretrain"]["baseline"] == "raw_input"
    assert np.isfinite(raw["metrics"]["roc_auc"])


def scratch_init(seed: int) -> dict[str, torch.Tensor]:
    """The weights a scratch cell of ``seed`` builds (finetune seeds, then builds)."""
    from ssltk.engine.runtime import seed_everything
    from ssltk.registry import get_registry

    state = torch.get_rng_state()
    try:
        seed_everything(seed)
        net = get_registry().build("backbones", BATCH_NORM, in_channels=1, spatial_dims=3)
        return net.state_dict()
    finally:
        torch.set_rng_state(state)


@pytest.mark.slow
@pytest.mark.numerics
def test_resume_skips_finished_baseline_cells_and_redoes_the_rest_exactly(batch_norm_run,
                                                                          monkeypatch):
    cfg, root = batch_norm_run
    results = root / "results.jsonl"
    complete = results.read_text().splitlines(keepends=True)
    done = {r["cell"]: r for r in map(json.loads, complete)}
    baseline_lines = [i for i, line in enumerate(complete)
                      if json.loads(line)["method"] in ("random_init_bn", "raw_input")]
    keep = complete[:baseline_lines[1] + 1]  # a crash after the first two baseline cells
    results.write_text("".join(keep))
    for encoder in root.glob("pretrain/random_init_bn-*/encoder.pt"):
        encoder.unlink()  # ... and before the fitted encoders were written
    ran = []
    from ssltk.bench import groups
    finetune = groups.finetune
    monkeypatch.setattr(groups, "finetune",
                        lambda run, **kw: ran.append(run) or finetune(run, **kw))
    run_benchmark(cfg)
    assert len(ran) == len(complete) - len(keep)
    after = {r["cell"]: r for r in read_results(results)}
    assert after.keys() == done.keys()
    for cell, rec in after.items():
        assert rec["metrics"] == done[cell]["metrics"], rec["method"]
        assert rec.get("baseline") == done[cell].get("baseline")


@pytest.mark.slow
@pytest.mark.numerics
def test_without_batch_norm_the_fitted_row_equals_random_init_and_says_so(tmp_path, write):
    root = run_benchmark(write(tmp_path, seeds=[0], finetune={
        "modes": ["frozen"], "baselines": ["random_init", "random_init_bn"]}))
    rows = frozen_rows(root)  # the tiny benchmark's backbone has group norm
    bn, scratch = rows[("random_init_bn", 0, "2/class")], rows[("scratch", 0, "2/class")]
    assert bn["baseline"]["bn_layers"] == 0 and bn["baseline"]["same_as_random_init"]
    assert bn["baseline"]["note"] == SAME_AS_RANDOM_INIT
    assert bn["metrics"] == scratch["metrics"] and bn["split_hash"] == scratch["split_hash"]
    assert bn["predictions"] == scratch["predictions"]
