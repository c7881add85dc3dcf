"""Batch plans, targets and the small runtime helpers of the engine."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ssltk.data.loading import epoch_batches, rank_slice
from ssltk.engine.runtime import alignment_uniformity, read_history, resolve_device, step_generator
from ssltk.engine.targets import load_targets
from ssltk.errors import SsltkError


def test_epoch_batches_are_a_pure_function_of_seed_and_epoch():
    rows = np.arange(10, 33)
    a = epoch_batches(rows, 4, seed=3, epoch=1)
    assert [b.tolist() for b in a] == [b.tolist() for b in epoch_batches(rows, 4, 3, 1)]
    assert [b.tolist() for b in a] != [b.tolist() for b in epoch_batches(rows, 4, 3, 2)]
    assert len(a) == 5 and all(len(b) == 4 for b in a)  # 23 rows: last 3 dropped
    flat = np.concatenate(a)
    assert len(set(flat.tolist())) == 20 and set(flat.tolist()) <= set(rows.tolist())
    assert len(np.concatenate(epoch_batches(rows, 4, 3, 1, drop_last=False))) == 23


def test_rank_slices_partition_the_global_batch_in_order():
    batch = np.arange(8)
    parts = [rank_slice(batch, r, 2) for r in range(2)]
    assert np.concatenate(parts).tolist() == batch.tolist()


def test_step_generator_is_deterministic_and_distinct():
    a = torch.rand(3, generator=step_generator(0, 5))
    assert torch.equal(a, torch.rand(3, generator=step_generator(0, 5)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(0, 6)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(0, 5, rank=1)))


def test_alignment_and_uniformity_reference_values():
    z = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [-1.0, 0.0]]])
    out = alignment_uniformity(z)
    # positives: identical pair (0) and a pair at distance^2 = 1 + 1 = 2 -> mean 1
    assert out["alignment"] == pytest.approx(1.0)
    # one distinct pair in view 0 at distance^2 = 2 -> log exp(-4) = -4
    assert out["uniformity"] == pytest.approx(-4.0)


def test_history_keeps_the_last_record_of_each_epoch(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (
        {"epoch": 0, "loss": 3.0}, {"epoch": 1, "loss": 2.0}, {"epoch": 1, "loss": 1.5})))
    assert read_history(path) == [{"epoch": 0, "loss": 3.0}, {"epoch": 1, "loss": 1.5}]


def test_a_device_that_does_not_exist_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device exists")
    with pytest.raises(SsltkError, match="device 'cuda:3' does not exist here"):
        resolve_device("cuda:3")
    assert resolve_device("auto").type == "cpu"


def fake_store(**columns):
    kinds = {k: SimpleNamespace(kind=kind) for k, (kind, _) in columns.items()}
    meta = {k: np.asarray(v) for k, (_, v) in columns.items()}
    return SimpleNamespace(columns=kinds, meta=meta)


def test_targets_classification_with_a_class_subset():
    store = fake_store(diagnosis=("categorical", ["CN", "AD", "MCI", "", "AD"]))
    t = load_targets(store, "diagnosis", "classification", ["CN", "AD"])
    assert t.labels.tolist() == [0, 1, -1, -1, 1]
    assert t.labelled_rows().tolist() == [0, 1, 4]
    with pytest.raises(SsltkError, match=r"2 train row\(s\) \(e.g. row 2\)"):
        t.check_rows([0, 2, 3], "train")
    assert t.class_weights([0, 1, 4]).tolist() == pytest.approx([1.5, 0.75])


def test_targets_errors_name_the_column_and_the_fix():
    store = fake_store(diagnosis=("categorical", ["CN", "AD"]), age=("continuous", [70.0, 71.0]))
    with pytest.raises(SsltkError, match=r"class 'MCI' of data.classes is not in column "
                                         r"'diagnosis' of store \(values: AD, CN\)"):
        load_targets(store, "diagnosis", "classification", ["CN", "MCI"])
    with pytest.raises(SsltkError, match="has no column 'dx'.*fix data.target"):
        load_targets(store, "dx", "classification", None)
    with pytest.raises(SsltkError, match="is categorical, not continuous"):
        load_targets(store, "diagnosis", "regression", None)
    t = load_targets(store, "age", "regression", None)
    assert t.standardisation([0, 1]) == pytest.approx((70.5, 0.5))
