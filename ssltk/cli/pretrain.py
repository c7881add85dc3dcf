"""``ssltk pretrain CONFIG.toml``: one pretraining run of a benchmark's grid.

``torchrun --nproc_per_node=N -m ssltk pretrain CONFIG.toml`` runs it under DDP.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ssltk.cli._common import ConfigArg, DeviceOpt, console, registry


def command(
    ctx: typer.Context,
    config: ConfigArg,
    objective: Annotated[str | None, typer.Option(help="Objective of the grid (default: first).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default: the first of `seeds`).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Output directory (default: the grid's, pretrain.cache_dir/<hash>).")] = None,
    device: DeviceOpt = "auto",
    checkpoint_every: Annotated[int | None, typer.Option(help="Checkpoint every N steps.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Pretrain the backbone with one objective of CONFIG (resumes an interrupted run)."""
    from ssltk.bench.grid import find_job
    from ssltk.bench.metadata import check_metadata
    from ssltk.config import load_config
    from ssltk.engine import pretrain

    reg = registry(ctx)
    cfg = load_config(config, reg)
    rows = (check_metadata(cfg, reg).pretrain_rows() if cfg.data.finetune_store.exists()
            else None)  # the grid's rows (exclude_test, data.missing), so `ssltk run` reuses it
    job = find_job(cfg, objective, seed, source="--objective", rows=rows)
    result = pretrain(job.run, out or job.out_dir(), registry=reg, device=device,
                      checkpoint_every=checkpoint_every, progress=progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun, rank 0 speaks for all
    word = "already done" if result.cached else "done"
    console().print(f"[green]{word}[/] encoder: {result.encoder_path}")
    if result.history:
        last = result.history[-1]
        console().print("last epoch: " + ", ".join(
            f"{k} {v:.4g}" for k, v in last.items() if isinstance(v, float)))
