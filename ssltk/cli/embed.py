"""``ssltk embed STORE``: the embeddings of every volume of a store, with its metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ssltk.cli._common import DeviceOpt, console, registry
from ssltk.errors import ConfigError


def command(
    ctx: typer.Context,
    store: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Volume store.")],
    out: Annotated[Path, typer.Option(help="HDF5 file to write the embeddings to.")],
    backbone: Annotated[str, typer.Option(help="Backbone name.")] = "resnet18",
    backbone_params: Annotated[str, typer.Option(help="Backbone parameters as JSON.")] = "{}",
    encoder: Annotated[Path | None, typer.Option(exists=True, help="encoder.pt of pretraining.")] = None,
    batch_size: int = 8,
    device: DeviceOpt = "auto",
) -> None:
    """Write the embeddings of every volume of STORE (and its metadata) to an HDF5 file."""
    from ssltk.engine import embed_store

    try:
        params = json.loads(backbone_params)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--backbone-params is not valid JSON: {exc}") from None
    path = embed_store(store, {"name": backbone, **params}, encoder, out, batch_size=batch_size,
                       device=device, registry=registry(ctx))
    console().print(f"[green]wrote[/] {path}")
