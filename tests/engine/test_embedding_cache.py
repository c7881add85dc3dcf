"""Frozen cells of one encoder share its embeddings (EmbeddingCache): same results as embedding
each cell's rows, each row embedded once, and a cell's numbers do not depend on the cells
that ran before it (what a resumed run needs)."""

from __future__ import annotations

import numpy as np
import pytest

from ssltk.engine import finetuning
from ssltk.engine.finetuning import EmbeddingCache, FinetuneRun, finetune

pytestmark = pytest.mark.numerics

BACKBONE = {"name": "resnet10", "widen_factor": 0.125, "norm": "group"}
SPLITS = {"a": (list(range(0, 8)), [8, 9, 10, 11], [12, 13, 14, 15]),
          "b": ([2, 3, 6, 7, 10, 11, 14, 15], [0, 1, 4, 5], [8, 9, 12, 13])}


def run(store, split: str, batch_size: int = 4) -> FinetuneRun:
    train, val, test = SPLITS[split]
    return FinetuneRun(store=store, target="diagnosis", classes=["CN", "AD"], backbone=BACKBONE,
                       mode="frozen", train_rows=train, val_rows=val, test_rows=test,
                       batch_size=batch_size)


def test_shared_embeddings_match_per_cell_embeddings(store3d, monkeypatch):
    calls = []
    embed = finetuning.embed_rows
    monkeypatch.setattr(finetuning, "embed_rows",
                        lambda backbone, reader, rows, *a: calls.append(len(rows)) or
                        embed(backbone, reader, rows, *a))
    plain = {s: finetune(run(store3d, s)) for s in SPLITS}
    assert len(calls) == 6  # train, val, test per cell
    calls.clear()
    cache = EmbeddingCache()
    shared = {s: finetune(run(store3d, s), embeddings=cache) for s in SPLITS}
    assert calls == [16]  # every labelled row once, for both cells
    for s in SPLITS:
        # the same embeddings up to the rounding of other batch compositions
        assert np.allclose(shared[s].predictions["proba"], plain[s].predictions["proba"],
                           atol=1e-4)
        assert shared[s].predictions["rows"] == plain[s].predictions["rows"]


def test_a_cells_numbers_do_not_depend_on_the_cells_before_it(store3d):
    first = EmbeddingCache()
    a_then_b = [finetune(run(store3d, s), embeddings=first) for s in ("a", "b")]
    alone = finetune(run(store3d, "b"), embeddings=EmbeddingCache())
    assert alone.predictions == a_then_b[1].predictions
    assert alone.metrics == a_then_b[1].metrics


def test_another_batch_size_replaces_the_table(store3d):
    cache = EmbeddingCache()
    finetune(run(store3d, "a"), embeddings=cache)
    key = cache._key
    finetune(run(store3d, "a", batch_size=8), embeddings=cache)
    assert cache._key != key
