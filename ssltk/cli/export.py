"""``ssltk export ENCODER``: a pretrained encoder as the plain weights of a MONAI network."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ssltk.cli._common import console


def command(
    encoder: Annotated[Path, typer.Argument(exists=True, help="encoder.pt, or a model bundle "
                                            "folder.")],
    out: Annotated[Path, typer.Option(help="Where to write the plain MONAI state_dict.")],
) -> None:
    """Export a pretrained encoder (or a bundle's) as a plain state_dict of the MONAI network."""
    from ssltk.engine import export_encoder

    if encoder.is_dir():
        from ssltk.engine.bundle import export_bundle

        console().print(f"[green]wrote[/] {export_bundle(encoder, out)}")
        return
    console().print(f"[green]wrote[/] {export_encoder(encoder, out)}")
