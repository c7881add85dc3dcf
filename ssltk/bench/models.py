"""Model bundles saved by a benchmark run (``[finetune] save_models``), under ``RUN_DIR/models``.

* ``"all"``: every cell's bundle, ``models/<method>-<mode>-<budget>-seed<S>-rep<R>/``.
* ``"best"``: per method and mode, the cell with the best validation score (the score that
  picked the probe's regularisation or the early-stopping epoch) among the cells at the largest
  budget, ``models/<method>-<mode>/``. Each candidate is written to ``models/.candidates/`` as
  its cell finishes (any process, any order); :func:`select_best` then keeps the best per
  method and mode, also against a bundle kept by an earlier run, and removes the rest. A crash
  leaves candidates that the resumed run's selection still counts.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path

from ssltk.budgets import Budget
from ssltk.engine.bundle import MODEL_JSON, read_model_json

log = logging.getLogger(__name__)
MODELS = "models"
CANDIDATES = ".candidates"


def _slug(budget: Budget) -> str:
    return f"{budget.kind}{budget.value:g}"


def model_dir(root: Path, cell, policy: str, largest: Budget | None) -> Path | None:
    """Where the cell's bundle goes under ``policy``, or None when it is not saved."""
    if policy == "all":
        return root / MODELS / (f"{cell.method}-{cell.mode}-{_slug(cell.budget)}-"
                                f"seed{cell.seed}-rep{cell.repeat}")
    if policy == "best" and cell.budget == largest:
        return root / MODELS / CANDIDATES / cell.key
    return None


def model_info(cell, benchmark: str, config_hash: str) -> dict:
    """The facts a runner's bundle records about its cell (model.json's ``info``)."""
    return {"name": f"{benchmark}/{cell.method}-{cell.mode}", "benchmark": benchmark,
            "benchmark_config_hash": config_hash, "method": cell.method, "mode": cell.mode,
            "cell": cell.key, "budget": cell.budget.as_dict(), "budget_label": cell.budget.label,
            "seed": cell.seed, "repeat": cell.repeat, "split_hash": cell.split_hash}


def _score(meta: dict) -> float:
    score = meta.get("val_score")
    return -math.inf if score is None or not math.isfinite(score) else float(score)


def _rank(meta: dict) -> tuple:
    """Higher is better: the validation score, then the lower seed and repeat (a fixed tie
    break, so the choice does not depend on the order cells finished in)."""
    info = meta.get("info", {})
    return _score(meta), -info.get("seed", 0), -info.get("repeat", 0)


def select_best(root: Path) -> list[Path]:
    """Keep the best candidate per (method, mode) as ``models/<method>-<mode>/``.

    Returns:
        The bundles kept or replaced by this call.
    """
    cand_dir = root / MODELS / CANDIDATES
    if not cand_dir.is_dir():
        return []
    best: dict[tuple[str, str], tuple[tuple, Path]] = {}
    for path in sorted(p for p in cand_dir.iterdir() if (p / MODEL_JSON).is_file()):
        meta = read_model_json(path)
        key = (meta["info"]["method"], meta["info"]["mode"])
        if key not in best or _rank(meta) > best[key][0]:
            best[key] = (_rank(meta), path)
    kept = []
    for (method, mode), (rank, path) in best.items():
        dest = root / MODELS / f"{method}-{mode}"
        if (dest / MODEL_JSON).is_file() and _rank(read_model_json(dest)) >= rank:
            continue  # an earlier run's bundle is as good
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(path, dest)
        kept.append(dest)
        log.info("best %s %s model: %s (val score %.4g)", method, mode, dest, rank[0])
    shutil.rmtree(cand_dir, ignore_errors=True)
    return kept


def saved_bundles(root: Path) -> list[Path]:
    """Every bundle folder directly under ``RUN_DIR/models`` (candidates excluded)."""
    folder = root / MODELS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if (p / MODEL_JSON).is_file())


def best_bundles(root: Path) -> dict[tuple[str, str], Path]:
    """(method, mode) -> the saved bundle with the best validation score at the largest
    budget saved for that mode (works for both policies)."""
    metas = [(p, read_model_json(p)) for p in saved_bundles(root)]
    metas = [(p, m) for p, m in metas if "method" in m.get("info", {})]
    out: dict[tuple[str, str], Path] = {}
    for mode in sorted({m["info"]["mode"] for _, m in metas}):
        in_mode = [(p, m) for p, m in metas if m["info"]["mode"] == mode]
        top = max(Budget(**m["info"]["budget"]).sort_key for _, m in in_mode)
        ranked = {}
        for p, m in in_mode:
            if Budget(**m["info"]["budget"]).sort_key != top:
                continue
            key = (m["info"]["method"], mode)
            if key not in ranked or _rank(m) > ranked[key][0]:
                ranked[key] = (_rank(m), p)
        out.update({k: v[1] for k, v in ranked.items()})
    return out
