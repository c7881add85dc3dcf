"""Render the augmentation gallery: docs/img/aug_<name>.png and docs/img/aug_gallery.png.

For every registered augmentation (p = 1, other parameters at their defaults), a mid-axial and
a mid-coronal slice of a 96^3 brain volume before and after. The volume is a subject of the
synthetic cohort (``ssltk.store.synth``) when that module can render one, else the MNI152
template shipped with nilearn (offline), resized to 96^3 and scaled to [0, 1].

    python docs/make_gallery.py [--out docs/img] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ssltk.augment import DEFAULT_PIPELINE, Pipeline  # noqa: E402
from ssltk.errors import ConfigError  # noqa: E402
from ssltk.registry import get_registry  # noqa: E402

SIZE = 96


def synthetic_volume(seed: int) -> torch.Tensor | None:
    """One synthetic-cohort subject at 96^3, or None when the module cannot provide one."""
    try:
        from ssltk.store import synth

        spec = synth.cohort_specs(1, seed)[0]
        site = synth.make_sites(3, seed)[spec.site]
        grid = synth.template_grid((SIZE,) * 3)
        vol = np.asarray(synth.render_session(spec, site, grid, seed), dtype=np.float32)
    except (ImportError, AttributeError, TypeError, ValueError, IndexError, KeyError):
        return None
    vol = torch.from_numpy(vol).reshape(-1, *vol.shape[-3:])[:1]
    return vol if vol.shape[-3:] == (SIZE,) * 3 else None


def mni_volume() -> torch.Tensor:
    """The MNI152 2 mm template, resized to 96^3, intensities in [0, 1]: ``(1, 96, 96, 96)``."""
    from nilearn.datasets import load_mni152_template

    data = np.asarray(load_mni152_template(resolution=2).get_fdata(), dtype=np.float32)
    vol = torch.from_numpy(data)[None, None]
    vol = F.interpolate(vol, size=(SIZE,) * 3, mode="trilinear", align_corners=False)[0]
    return (vol - vol.min()) / (vol.max() - vol.min())


def slices(vol: torch.Tensor) -> list[np.ndarray]:
    """Mid-axial and mid-coronal slices of ``(C, X, Y, Z)`` (RAS), displayed radiologically."""
    v = vol[0].numpy()
    return [np.rot90(v[:, :, SIZE // 2]), np.rot90(v[:, SIZE // 2, :])]


def build(registry, name: str):
    try:
        return registry.create("augmentations", name, {"p": 1.0})
    except ConfigError:
        return registry.create("augmentations", name, {})


def render_one(ax_row, before: torch.Tensor, after: torch.Tensor, title: str) -> None:
    for k, img in enumerate(slices(before) + slices(after)):
        ax_row[k].imshow(img, cmap="gray", vmin=0, vmax=1)
        ax_row[k].axis("off")
    ax_row[0].set_title("original", fontsize=8)
    ax_row[2].set_title(title, fontsize=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "img")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    registry = get_registry()
    vol = synthetic_volume(args.seed)
    source = "synthetic cohort subject" if vol is not None else "MNI152 template"
    vol = mni_volume() if vol is None else (vol - vol.min()) / (vol.max() - vol.min())
    x = vol[None].repeat(1, 1, 1, 1, 1)

    results = {}
    for name in registry.names("augmentations"):
        results[name] = build(registry, name)(x, torch.Generator().manual_seed(args.seed))[0]
    pipe = Pipeline.from_specs(registry, copy.deepcopy(DEFAULT_PIPELINE))
    results["default pipeline"] = pipe(x, torch.Generator().manual_seed(args.seed + 1))[0]

    for name, after in results.items():
        fig, axes = plt.subplots(1, 4, figsize=(8, 2.3))
        render_one(axes, vol, after.clamp(0, 1) if name != "zscore" else
                   (after - after.min()) / (after.max() - after.min()), name)
        fig.tight_layout()
        fig.savefig(args.out / f"aug_{name.replace(' ', '_')}.png", dpi=80)
        plt.close(fig)

    names = list(results)
    fig, axes = plt.subplots(len(names), 4, figsize=(8, 2.1 * len(names)))
    for row, name in zip(axes, names):
        after = results[name]
        if name == "zscore":
            after = (after - after.min()) / (after.max() - after.min())
        render_one(row, vol, after.clamp(0, 1), name)
    fig.suptitle(f"ssltk augmentations (p = 1), {source}, 96^3, seed {args.seed}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / len(names)))
    fig.savefig(args.out / "aug_gallery.png", dpi=60)
    plt.close(fig)


if __name__ == "__main__":
    main()
