"""Render the figures of docs/synthetic-cohort.md into docs/img/synth_*.png.

    python docs/make_figures.py            # about 15 s on 2 CPU cores

* ``synth_groups.png``: mid axial and coronal slices of cohort subjects (seed 0): CN, MCI and AD
  of similar age, and a young and an old CN subject.
* ``synth_effects.png``: what each effect changes, on one subject's anatomy rendered twice with
  the same pose, site and noise: AD vs CN at the same age, and age 85 vs 58 in CN.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ssltk.store import synth  # noqa: E402

SHAPE = (96, 96, 96)
AXIAL_MM, CORONAL_MM = -12.0, -22.0  # through the hippocampi and the temporal horns
IMG = Path(__file__).parent / "img"


def _index(grid, axis: int, mm: float) -> int:
    """Voxel index along ``axis`` of MNI coordinate ``mm``."""
    return int(round((mm - float(grid.box[0, axis])) / grid.spacing[axis] - 0.5))


def _slices(volume: np.ndarray, grid) -> tuple[np.ndarray, np.ndarray]:
    """(axial, coronal) slices of a (1, X, Y, Z) volume, ready for ``imshow(origin="lower")``."""
    v = volume[0]
    return v[:, :, _index(grid, 2, AXIAL_MM)].T, v[:, _index(grid, 1, CORONAL_MM), :].T


def _render(spec, seed: int, grid) -> np.ndarray:
    return synth.render_session(spec, synth.make_sites(3, seed)[spec.site], grid, seed)


def _pick(specs, diagnosis: str, age: float):
    """The baseline subject of ``diagnosis`` whose age is closest to ``age``."""
    pool = [s for s in specs if s.diagnosis == diagnosis and s.session == "ses-01"]
    return min(pool, key=lambda s: abs(s.age - age))


def groups_figure(seed: int, out: Path) -> None:
    """CN / MCI / AD at ~78 years, then young and old CN: axial and coronal slices."""
    grid = synth.template_grid(SHAPE)
    specs = synth.cohort_specs(300, seed)
    rows = [("CN", 78), ("MCI", 78), ("AD", 78), ("CN", 58), ("CN", 86)]
    fig, axes = plt.subplots(2, len(rows), figsize=(2.6 * len(rows), 5.6))
    for col, (dx, age) in enumerate(rows):
        spec = _pick(specs, dx, age)
        axial, coronal = _slices(_render(spec, seed, grid), grid)
        for row, image in enumerate((axial, coronal)):
            ax = axes[row, col]
            ax.imshow(image, origin="lower", cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([]), ax.set_yticks([])
        axes[0, col].set_title(f"{dx}, {spec.age:.0f} y, {spec.sex}\n"
                               f"{spec.subject_id}, site-{chr(65 + spec.site)}", fontsize=9)
    axes[0, 0].set_ylabel(f"axial z = {AXIAL_MM:g} mm")
    axes[1, 0].set_ylabel(f"coronal y = {CORONAL_MM:g} mm")
    fig.suptitle(f"Synthetic cohort (seed {seed}, {SHAPE[0]}^3): same-age CN / MCI / AD, "
                 f"then young vs old CN", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _with(spec, age: float, diagnosis: str, severity: float):
    """``spec`` re-aged and re-diagnosed (no brain-age offset), anatomy and pose unchanged."""
    return dataclasses.replace(spec, age=age, diagnosis=diagnosis,
                               **synth.atrophy(age, 0.0, severity))


EFFECT_VIEWS = (("axial", 2, AXIAL_MM), ("axial", 2, 14.0), ("coronal", 1, CORONAL_MM))


def _view(volume: np.ndarray, grid, axis: int, mm: float) -> np.ndarray:
    """The slice of a (1, X, Y, Z) volume at MNI ``mm`` along ``axis`` (1 = y, 2 = z)."""
    return np.take(volume[0], _index(grid, axis, mm), axis=axis).T


def effects_figure(seed: int, out: Path) -> None:
    """One anatomy rendered as CN / AD (78 y) and as CN at 58 / 86 y: differences."""
    grid = synth.template_grid(SHAPE)
    base = synth.cohort_specs(1, seed)[0]
    pairs = [("AD − CN, both 78 y\n(severity 0.8)", _with(base, 78, "CN", 0.0),
              _with(base, 78, "AD", 0.8)),
             ("CN 86 y − CN 58 y", _with(base, 58, "CN", 0.0), _with(base, 86, "CN", 0.0))]
    fig, axes = plt.subplots(2, 1 + len(EFFECT_VIEWS), figsize=(11, 5.6), layout="constrained")
    for row, (title, before, after) in enumerate(pairs):
        v0, v1 = _render(before, seed, grid), _render(after, seed, grid)
        axes[row, 0].imshow(_view(v1, grid, 2, AXIAL_MM), origin="lower", cmap="gray",
                            vmin=0.0, vmax=1.0)
        axes[row, 0].set_ylabel(title, fontsize=9)
        for col, (_, axis, mm) in enumerate(EFFECT_VIEWS, start=1):
            diff = _view(v1, grid, axis, mm) - _view(v0, grid, axis, mm)
            im = axes[row, col].imshow(diff, origin="lower", cmap="RdBu_r", vmin=-0.3, vmax=0.3)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    axes[0, 0].set_title(f"after, axial z = {AXIAL_MM:g} mm", fontsize=9)
    for col, (name, axis, mm) in enumerate(EFFECT_VIEWS, start=1):
        axes[0, col].set_title(f"after − before, {name} {'yz'[axis - 1]} = {mm:g} mm",
                               fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.7, label="intensity difference (blue: darker)")
    fig.suptitle("Effect maps: one anatomy rendered twice with the same pose, site and noise",
                 fontsize=11)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=IMG)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    groups_figure(args.seed, args.out / "synth_groups.png")
    effects_figure(args.seed, args.out / "synth_effects.png")


if __name__ == "__main__":
    main()
