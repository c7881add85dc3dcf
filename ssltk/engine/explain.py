"""Grad-CAM of a model bundle: heatmaps, PNG overlays and NIfTI maps in the input's space.

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017) and Grad-CAM++ (Chattopadhay et al., WACV 2018) are
MONAI's (:class:`monai.visualize.GradCAM`, :class:`monai.visualize.GradCAMpp`), computed on the
backbone's last feature map: the layer whose output is ``forward_features(x)[-1]``, found by
running the model once with forward hooks (so any backbone plugin works, not only ours).

MONAI upsamples the map to the preprocessed scan; we scale each map to [0, 1] by its maximum
(MONAI's default post-processing maps the maximum to 0). For NIfTI input the map is then
resampled (trilinear, zero outside) from the preprocessed grid back onto the input file's grid
through the world coordinates that the preprocessing's affine tracks, and saved with the input's
affine, so it overlays the original scan in any viewer.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from ssltk.engine.bundle import Bundle
from ssltk.engine.predict import Input, Scan, ScanError, forward, iter_scans
from ssltk.errors import SsltkError

METHODS = ("gradcam", "gradcampp")


def target_layer(model: nn.Module, example: torch.Tensor) -> str:
    """Name (in ``model.named_modules()``) of the last module whose output is the backbone's
    last feature map ``(B, C, *spatial)``, e.g. ``backbone.net.layer4`` for a MONAI ResNet."""
    with torch.no_grad():
        want = tuple(model.backbone.forward_features(example)[-1].shape)
    found: list[str] = []
    hooks = [module.register_forward_hook(
        lambda m, i, o, name=name: found.append(name)
        if isinstance(o, torch.Tensor) and tuple(o.shape) == want else None)
        for name, module in model.named_modules() if name.startswith("backbone.")]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    if not found:
        raise SsltkError(f"Grad-CAM needs a layer whose output is the backbone's last feature map "
                         f"{want}; backbone '{type(model.backbone).__name__}' computes it "
                         f"outside any submodule")
    return found[-1]


class CamExplainer:
    """MONAI's Grad-CAM (or Grad-CAM++) on a bundle's model; one per model (holds hooks)."""

    def __init__(self, bundle: Bundle, method: str = "gradcam"):
        from monai.visualize import GradCAM, GradCAMpp

        if method not in METHODS:
            raise SsltkError(f"--method '{method}' is not one of {', '.join(METHODS)}")
        self.bundle = bundle
        shape = (1, bundle.in_channels, *bundle.preprocessing["shape"])
        device = next(bundle.model.parameters()).device
        self.layer = target_layer(bundle.model, torch.zeros(shape, device=device))
        cls = GradCAM if method == "gradcam" else GradCAMpp
        self.cam = cls(nn_module=bundle.model, target_layers=self.layer,
                       postprocessing=lambda x: x)

    def __call__(self, volumes: np.ndarray, class_idx: int) -> np.ndarray:
        """``(B, C, *spatial)`` -> ``(B, *spatial)`` maps in [0, 1] for class ``class_idx``."""
        device = next(self.bundle.model.parameters()).device
        x = torch.as_tensor(volumes, dtype=torch.float32, device=device)
        heat = self.cam(x, class_idx=class_idx).detach().float().cpu().numpy()[:, 0]
        peak = heat.reshape(len(heat), -1).max(axis=1)
        return heat / np.where(peak > 0, peak, 1.0).reshape(-1, *[1] * (heat.ndim - 1))


def class_index(bundle: Bundle, output: np.ndarray, class_name: str | None) -> int:
    """The class to explain: ``class_name``, else the predicted one (0 for regression)."""
    if bundle.task == "regression":
        return 0
    if class_name is None:
        return int(np.argmax(output))
    if class_name not in bundle.classes:
        raise SsltkError(f"--class '{class_name}' is not a class of model '{bundle.name}' "
                         f"({', '.join(bundle.classes)})")
    return bundle.classes.index(class_name)


# -- geometry ----------------------------------------------------------------------------------
def to_input_space(heat: np.ndarray, scan: Scan) -> np.ndarray:
    """Resample a map on the preprocessed grid onto the input file's grid (trilinear)."""
    from scipy.ndimage import affine_transform

    # input voxel -> world -> preprocessed voxel
    matrix = np.linalg.inv(scan.affine) @ scan.input_affine
    return affine_transform(heat.astype(np.float32), matrix[:3, :3], offset=matrix[:3, 3],
                            output_shape=scan.input_shape, order=1, mode="constant", cval=0.0)


def save_heatmap_nifti(heat: np.ndarray, scan: Scan, path: Path) -> Path:
    """The map on the input's grid, saved with the input's affine (and its qform/sform codes)."""
    import nibabel as nib

    src = nib.load(str(scan.input.path))
    img = nib.Nifti1Image(to_input_space(heat, scan), scan.input_affine)
    img.set_qform(scan.input_affine, int(src.header["qform_code"]) or 1)
    img.set_sform(scan.input_affine, int(src.header["sform_code"]) or 1)
    nib.save(img, str(path))
    return path


# -- overlays ----------------------------------------------------------------------------------
_VIEWS = (("sagittal", 0), ("coronal", 1), ("axial", 2))


def overlay_figure(volume: np.ndarray, heat: np.ndarray, title: str) -> Figure:
    """Grayscale scan with the map in colour: 2D one panel; 3D three orthogonal slices through
    the map's maximum (RAS volumes: right, anterior and superior up/right)."""
    image = volume[0]
    if image.ndim == 2:
        fig = Figure(figsize=(4.2, 4.6), layout="constrained")
        _draw(fig.subplots(), image, heat, "upper")
    else:
        peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
        fig = Figure(figsize=(11, 4.2), layout="constrained")
        for ax, (name, axis) in zip(fig.subplots(1, 3), _VIEWS):
            cut = [slice(None)] * 3
            cut[axis] = peak[axis]
            _draw(ax, image[tuple(cut)].T, heat[tuple(cut)].T, "lower")
            ax.set_title(f"{name} {peak[axis]}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return fig


def _draw(ax, image: np.ndarray, heat: np.ndarray, origin: str) -> None:
    ax.imshow(image, cmap="gray", origin=origin, interpolation="nearest")
    ax.imshow(heat, cmap="jet", origin=origin, vmin=0, vmax=1, interpolation="bilinear",
              alpha=np.clip(heat, 0, 1) * 0.6)
    ax.set_axis_off()


def overlay_png(volume: np.ndarray, heat: np.ndarray, title: str,
                path: Path | None = None) -> bytes:
    """PNG bytes of :func:`overlay_figure` (also written to ``path`` when given)."""
    buf = io.BytesIO()
    overlay_figure(volume, heat, title).savefig(buf, format="png", dpi=100)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


# -- whole inputs ------------------------------------------------------------------------------
@dataclass
class Explanation:
    input: Input
    class_name: str
    output: np.ndarray
    png: Path | None = None
    nifti: Path | None = None


def explain_scan(explainer: CamExplainer, scan: Scan, class_name: str | None = None,
                 ) -> tuple[str, np.ndarray, np.ndarray]:
    """``(explained class, model output, map on the preprocessed grid)`` of one scan."""
    bundle = explainer.bundle
    output = forward(bundle, scan.volume[None])[0]
    idx = class_index(bundle, output, class_name)
    heat = explainer(scan.volume[None], idx)[0]
    name = bundle.classes[idx] if bundle.task == "classification" else bundle.meta["target"]
    return name, output, heat


def _title(bundle: Bundle, scan: Scan, name: str, output: np.ndarray) -> str:
    if bundle.task == "classification":
        p = output[bundle.classes.index(name)]
        return f"{scan.input.id}: Grad-CAM for '{name}' (p = {p:.3f}), model {bundle.name}"
    return f"{scan.input.id}: Grad-CAM, predicted {name} {output[0]:.4g}, model {bundle.name}"


def explain(bundle: Bundle, inputs: list[Input], out_dir: str | Path, *,
            class_name: str | None = None, method: str = "gradcam", on_error: str = "abort",
            skipped: list | None = None,
            progress: Callable[[int, int], None] | None = None) -> list[Explanation]:
    """Write ``<id>.png`` (and ``<id>_heatmap.nii.gz`` for NIfTI input) for every input."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    explainer = CamExplainer(bundle, method)
    if class_name is not None:
        class_index(bundle, np.zeros(1), class_name)  # a wrong class fails before any work
    results, skipped = [], skipped if skipped is not None else []
    for i, scan in enumerate(iter_scans(inputs, bundle, on_error, skipped)):
        name, output, heat = explain_scan(explainer, scan, class_name)
        stem = scan.input.id.replace("/", "__")
        png = out_dir / f"{stem}.png"
        overlay_png(scan.volume, heat, _title(bundle, scan, name, output), png)
        nifti = None
        if scan.affine is not None:
            nifti = save_heatmap_nifti(heat, scan, out_dir / f"{stem}_heatmap.nii.gz")
        results.append(Explanation(scan.input, name, output, png, nifti))
        if progress is not None:
            progress(len(results) + len(skipped), len(inputs))
    _write_index(bundle, results, out_dir / INDEX)
    return results


INDEX = "explanations.csv"


def _write_index(bundle: Bundle, results: list[Explanation], path: Path) -> None:
    """One row per scan: id, source, explained class, its probability (or the value), files."""
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "source", "class", "output", "png", "heatmap_nifti"])
        for e in results:
            value = (e.output[bundle.classes.index(e.class_name)]
                     if bundle.task == "classification" else e.output[0])
            writer.writerow([e.input.id, e.input.source, e.class_name, f"{value:.6f}",
                             e.png.name, e.nifti.name if e.nifti else ""])


__all__ = ["CamExplainer", "Explanation", "ScanError", "explain", "explain_scan",
           "overlay_png", "target_layer", "to_input_space"]
