"""``ssltk explain BUNDLE INPUT... --out DIR``: Grad-CAM overlays and NIfTI heatmaps."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ssltk.cli._common import console
from ssltk.cli.predict import BundleArg, DeviceOpt, Inputs, OnError, OnErrorOpt, load, \
    print_skipped, progress_bar


class Method(str, Enum):
    gradcam = "gradcam"
    gradcampp = "gradcampp"


def command(
    ctx: typer.Context,
    bundle: BundleArg,
    inputs: Inputs,
    out: Annotated[Path, typer.Option("--out", "-o", file_okay=False,
                                      help="Folder for <id>.png and <id>_heatmap.nii.gz.")],
    class_name: Annotated[str | None, typer.Option(
        "--class", help="Class to explain (default: each scan's predicted class).")] = None,
    method: Annotated[Method, typer.Option("--method", help="MONAI's GradCAM or GradCAMpp.")
                      ] = Method.gradcam,
    on_error: OnErrorOpt = OnError.abort,
    device: DeviceOpt = "auto",
) -> None:
    """Grad-CAM of BUNDLE's model on every scan of INPUT: PNG overlays, NIfTI heatmaps."""
    from ssltk.engine.explain import INDEX, explain
    from ssltk.engine.predict import discover_inputs, write_skipped

    model = load(ctx, bundle, device)
    scans = discover_inputs(inputs)
    skipped: list = []
    with progress_bar(f"explain {model.name}") as progress:
        done = explain(model, scans, out, class_name=class_name, method=method.value,
                       on_error=on_error.value, skipped=skipped, progress=progress)
    print_skipped(skipped, write_skipped(skipped, out / INDEX))
    n_nifti = sum(e.nifti is not None for e in done)
    console().print(f"[green]wrote[/] {out}: {len(done)} overlay(s), {n_nifti} NIfTI "
                    f"heatmap(s)", highlight=False)
