"""The report's Grad-CAM panel (``[report] gradcam = true``): where each method's model looks.

For each finetuning mode, one figure ``figures/gradcam_<mode>.png``: a row per method (its best
saved bundle at the largest budget, :func:`ssltk.bench.models.best_bundles`), a column per test
subject. The subjects are the first test subjects shared by every method's cell (all methods
share the splits of a seed and repeat), else each cell's own. 3D scans show the axial slice
through the map's maximum.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ssltk.bench.models import best_bundles
from ssltk.bench.results import RESULTS_FILE, read_results
from ssltk.bench.stats import method_label, method_sort_key

log = logging.getLogger(__name__)


def _test_rows(root: Path, bundles: dict) -> dict:
    """(method, mode) -> the test rows of the cell its bundle came from."""
    from ssltk.engine.bundle import read_model_json

    by_cell = {r["cell"]: r for r in read_results(root / RESULTS_FILE)}
    out = {}
    for key, path in bundles.items():
        rec = by_cell.get(read_model_json(path)["info"].get("cell"))
        out[key] = list(rec["predictions"]["rows"]) if rec and rec.get("predictions") else []
    return out


def _subjects(rows: dict, methods: list, n: int) -> dict:
    shared = set.intersection(*(set(rows[m]) for m in methods)) if methods else set()
    if len(shared) >= n:
        pick = [r for r in rows[methods[0]] if r in shared][:n]
        return {m: pick for m in methods}
    return {m: rows[m][:n] for m in methods}


def write_gradcam_panels(root: str | Path, n_subjects: int = 3, registry=None) -> list[Path]:
    """Draw ``figures/gradcam_<mode>.png`` for every mode with saved bundles."""
    from ssltk.engine.bundle import load_bundle
    from ssltk.engine.explain import CamExplainer, explain_scan
    from ssltk.engine.predict import Input, load_scan

    root = Path(root)
    bundles = best_bundles(root)
    rows = _test_rows(root, bundles)
    written = []
    for mode in sorted({mode for _, mode in bundles}):
        methods = sorted((k for k in bundles if k[1] == mode and rows[k]),
                         key=lambda k: method_sort_key(k[0]))
        if not methods:
            continue
        picks = _subjects(rows, methods, n_subjects)
        fig = Figure(figsize=(3.0 * n_subjects, 3.2 * len(methods)), layout="constrained")
        axes = np.atleast_2d(fig.subplots(len(methods), n_subjects, squeeze=False))
        fig.suptitle(f"Grad-CAM, {mode} finetuning (best model per method at the largest "
                     f"budget; axial slice through the map's maximum)", fontsize=11)
        for i, key in enumerate(methods):
            bundle = load_bundle(bundles[key], registry)
            explainer = CamExplainer(bundle)
            store = Path(bundle.meta["training"]["store"])
            for j, ax in enumerate(axes[i]):
                ax.set_axis_off()
                if j >= len(picks[key]):
                    continue
                scan = load_scan(Input("store", store, f"row {picks[key][j]}", picks[key][j]),
                                 bundle)
                name, output, heat = explain_scan(explainer, scan)
                _draw(ax, scan.volume[0], heat)
                p = output[bundle.classes.index(name)] if bundle.classes else output[0]
                ax.set_title(f"{method_label(key[0], mode)}\nrow {picks[key][j]}: {name} "
                             f"({p:.2f})", fontsize=9)
        path = root / "figures" / f"gradcam_{mode}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        written.append(path)
    return written


def _draw(ax, image: np.ndarray, heat: np.ndarray) -> None:
    if image.ndim == 3:
        k = np.unravel_index(int(np.argmax(heat)), heat.shape)[2]
        image, heat, origin = image[:, :, k].T, heat[:, :, k].T, "lower"
    else:
        origin = "upper"
    ax.imshow(image, cmap="gray", origin=origin)
    ax.imshow(heat, cmap="jet", origin=origin, vmin=0, vmax=1, alpha=np.clip(heat, 0, 1) * 0.6)
