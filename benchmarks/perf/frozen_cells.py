"""Linear-probe cells of one encoder: shared embeddings versus embedding each cell's rows.

A benchmark grid probes every encoder at several label budgets over many split repeats (the
quickstart: 2 budgets x 10 repeats = 20 frozen cells per encoder). Each cell needs the
embeddings of its train, validation and test rows. The alternative a user would write (and
what ssltk did before) embeds those rows cell by cell; ``EmbeddingCache`` embeds every
labelled row once per encoder and the cells look theirs up. Both paths run the same
``finetune`` (probe fit included) on the same cells; the script checks that they give the
same probabilities (up to batch-composition rounding) and prints wall time per path.

    python benchmarks/perf/frozen_cells.py            # the quickstart's shapes: 300 x 32^3
    python benchmarks/perf/frozen_cells.py --quick    # 120 x 24^3, 6 cells
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ssltk.engine.finetuning import EmbeddingCache, FinetuneRun, finetune
from ssltk.store import ColumnSpec, StoreWriter

BACKBONE = {"name": "resnet10", "widen_factor": 0.5}  # the quickstart's encoder


def write_store(path: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    columns = {"subject_id": ColumnSpec("id"), "diagnosis": ColumnSpec("categorical")}
    with StoreWriter.create(path, shape=(1, size, size, size), columns=columns,
                            dtype="float32", compression="none") as w:
        for i in range(n):
            dx = ["CN", "AD"][i % 2]
            vol = rng.random((1, size, size, size), dtype=np.float32)
            w.append(vol * (0.8 if dx == "AD" else 1.0), {"subject_id": f"s{i}", "diagnosis": dx})
    return path


def cells(n: int, repeats: int, budgets: list[int]) -> list[tuple[list, list, list]]:
    """Random subject-level splits: a fixed test quarter per repeat, budgets from the rest."""
    out = []
    for rep in range(repeats):
        perm = np.random.default_rng(rep).permutation(n).tolist()
        test, val, pool = perm[: n // 4], perm[n // 4: n // 4 + 20], perm[n // 4 + 20:]
        out += [(pool[:b], val, test) for b in budgets]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n, size, repeats, budgets = (120, 24, 3, [20, 60]) if args.quick else (300, 32, 10, [20, 200])
    with tempfile.TemporaryDirectory() as tmp:
        store = write_store(Path(tmp) / "s.h5", n, size)
        grid = cells(n, repeats, budgets)

        def run(rows) -> FinetuneRun:
            return FinetuneRun(store=store, target="diagnosis", classes=["CN", "AD"],
                               backbone=BACKBONE, mode="frozen", train_rows=rows[0],
                               val_rows=rows[1], test_rows=rows[2], batch_size=16, seed=0)

        t0 = time.perf_counter()
        per_cell = [finetune(run(c)) for c in grid]
        t_cell = time.perf_counter() - t0
        cache = EmbeddingCache()
        t0 = time.perf_counter()
        shared = [finetune(run(c), embeddings=cache) for c in grid]
        t_shared = time.perf_counter() - t0
    worst = max(np.abs(np.asarray(a.predictions["proba"]) - np.asarray(b.predictions["proba"])
                       ).max() for a, b in zip(per_cell, shared))
    assert worst < 1e-3, worst
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads; {len(grid)} frozen cells, store {n} x {size}^3, "
          f"ResNet-10 (widen 0.5)")
    print(f"embedding each cell's rows : {t_cell:7.1f} s")
    print(f"shared EmbeddingCache      : {t_shared:7.1f} s   ({t_cell / t_shared:.1f}x faster; "
          f"max |proba difference| {worst:.1e})")


if __name__ == "__main__":
    main()
