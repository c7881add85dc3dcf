"""Measure how learnable the synthetic cohort's effects are (the table of synthetic-cohort.md).

For each seed: baseline scans at 32^3 (120 subjects; 110 for seed 0, the test's cohort), AD vs
CN ROC-AUC of an L2 logistic regression on standardised raw voxels (5-fold stratified CV, mean
of 2 shuffles, as ``tests/store/test_synth.py``), and the Spearman correlation of age with the
mean intensity of the ventricle region (standardised within site) in CN subjects.

    OMP_NUM_THREADS=1 python docs/measure_synth.py 0 1 2 3 4 5 6 7 101 202
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from threadpoolctl import threadpool_limits

from ssltk.store import synth

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "store"))
from test_synth import _cv_auc  # noqa: E402  (the test's own estimator)


def baseline(n: int, seed: int):
    specs = [s for s in synth.cohort_specs(n, seed=seed) if s.session == "ses-01"]
    sites, grid = synth.make_sites(3, seed), synth.template_grid((32, 32, 32))
    x = np.stack([synth.render_session(s, sites[s.site], grid, seed) for s in specs])
    return specs, x.reshape(len(specs), -1).astype(np.float64)


def measure(seed: int) -> tuple[float, float]:
    specs, x = baseline(110 if seed == 0 else 120, seed)
    dx = np.array([s.diagnosis for s in specs])
    keep = np.isin(dx, ["CN", "AD"])
    auc = np.mean([_cv_auc(x[keep], (dx[keep] == "AD").astype(int), k) for k in range(2)])
    grid = synth.template_grid((32, 32, 32))
    weight = synth._bump(grid.points, synth.VENTRICLE_CENTRE, (10.0, 18.0, 10.0)).numpy()
    region, site = x @ weight / weight.sum(), np.array([s.site for s in specs])
    for k in np.unique(site):
        at = site == k
        region[at] = (region[at] - region[at].mean()) / region[at].std()
    cn, age = dx == "CN", np.array([s.age for s in specs])
    return float(auc), float(spearmanr(age[cn], region[cn])[0])


if __name__ == "__main__":
    with threadpool_limits(1):
        for seed in [int(s) for s in sys.argv[1:]] or [0]:
            auc, rho = measure(seed)
            print(f"seed {seed}: AD vs CN AUC {auc:.3f}, rho(age, ventricles) in CN {rho:.2f}",
                  flush=True)
