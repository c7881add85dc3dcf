"""``ssltk export ENCODER``: a pretrained encoder as the plain weights of the network it wraps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ssltk.cli._common import console, registry


def command(
    ctx: typer.Context,
    encoder: Annotated[Path, typer.Argument(exists=True, help="encoder.pt, or a model bundle "
                                            "folder.")],
    out: Annotated[Path, typer.Option(help="Where to write the plain state_dict.")],
) -> None:
    """Export a pretrained encoder (or a bundle's) as a plain state_dict of its framework's
    network (MONAI for the built-in backbones)."""
    from ssltk.engine import export_encoder

    if encoder.is_dir():
        from ssltk.engine.bundle import export_bundle

        console().print(f"[green]wrote[/] {export_bundle(encoder, out, registry=registry(ctx))}")
        return
    console().print(f"[green]wrote[/] {export_encoder(encoder, out, registry=registry(ctx))}")
