"""``ssltk pretrain``, ``ssltk finetune``, ``ssltk embed`` and ``ssltk export``: single stages.

``torchrun --nproc_per_node=N -m ssltk pretrain CONFIG.toml`` runs pretraining under DDP.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ssltk.cli._common import console, registry
from ssltk.config import BenchmarkConfig, load_config
from ssltk.errors import ConfigError

Config = Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Benchmark TOML.")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]


def pick_objective(cfg: BenchmarkConfig, objective: str | None):
    """The objective spec named ``objective`` (default: the first of the grid)."""
    specs = cfg.pretrain.objectives
    if objective is None:
        return specs[0]
    for spec in specs:
        if spec.name == objective:
            return spec
    names = ", ".join(s.name for s in specs)
    raise ConfigError(f"--objective '{objective}' is not in pretrain.objectives ({names})")


def pretrain_run(cfg: BenchmarkConfig, objective: str | None, seed: int | None):
    from ssltk.engine import PretrainRun

    stores = cfg.data.pretrain_store
    p = cfg.pretrain
    return PretrainRun(
        store=stores[0] if isinstance(stores, list) else stores, backbone=cfg.backbone,
        objective=pick_objective(cfg, objective), augmentations=p.augmentations,
        seed=cfg.seeds[0] if seed is None else seed, **p.settings())


def pretrain(
    ctx: typer.Context,
    config: Config,
    objective: Annotated[str | None, typer.Option(help="Objective of the grid (default: first).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default: the first of `seeds`).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory.")] = None,
    device: Device = "auto",
    checkpoint_every: Annotated[int | None, typer.Option(help="Checkpoint every N steps.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Pretrain the backbone with one objective of CONFIG (resumes an interrupted run)."""
    from ssltk.engine import pretrain as run_pretrain

    reg = registry(ctx)
    cfg = load_config(config, reg)
    run = pretrain_run(cfg, objective, seed)
    out = out or cfg.output_dir / cfg.name / "pretrain" / \
        f"{run.objective.name}-seed{run.seed}-{run.content_hash()[:8]}"
    result = run_pretrain(run, out, registry=reg, device=device,
                          checkpoint_every=checkpoint_every, progress=progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun, rank 0 speaks for all
    word = "already done" if result.cached else "done"
    console().print(f"[green]{word}[/] encoder: {result.encoder_path}")
    if result.history:
        last = result.history[-1]
        console().print("last epoch: " + ", ".join(
            f"{k} {v:.4g}" for k, v in last.items() if isinstance(v, float)))


def embed(
    ctx: typer.Context,
    store: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Volume store.")],
    out: Annotated[Path, typer.Option(help="HDF5 file to write the embeddings to.")],
    backbone: Annotated[str, typer.Option(help="Backbone name.")] = "resnet18",
    backbone_params: Annotated[str, typer.Option(help="Backbone parameters as JSON.")] = "{}",
    encoder: Annotated[Path | None, typer.Option(exists=True, help="encoder.pt of pretraining.")] = None,
    batch_size: int = 8,
    device: Device = "auto",
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


def export(
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


def print_metrics(metrics: dict, title: str) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        if isinstance(v, float):
            table.add_row(k, f"{v:.4f}")
    console().print(table)


def finetune(
    ctx: typer.Context,
    config: Config,
    encoder: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, help="encoder.pt of a pretraining (default: from scratch).")] = None,
    mode: Annotated[str, typer.Option(help="frozen (linear probe) or full.")] = "frozen",
    n_per_class: Annotated[int | None, typer.Option(help="Training subjects per class.")] = None,
    n_total: Annotated[int | None, typer.Option(help="Training subjects in total.")] = None,
    fraction: Annotated[float | None, typer.Option(help="Fraction of the training pool.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default: the first of `seeds`).")] = None,
    repeat: Annotated[int, typer.Option(help="Split repeat index.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write metrics and predictions (JSON).")] = None,
    save_model: Annotated[Path | None, typer.Option(
        "--save-model", file_okay=False,
        help="Save the trained model as a bundle folder (for predict, explain, serve).")] = None,
    device: Device = "auto",
) -> None:
    """Finetune one encoder (or scratch) on CONFIG's task: one cell of the benchmark grid."""
    from ssltk.bench.grid import Budget
    from ssltk.bench.splitting import base_split, budget_subset, finetune_run, load_cohort
    from ssltk.engine import finetune as run_finetune

    if mode not in ("frozen", "full"):
        raise ConfigError(f"--mode '{mode}' must be frozen or full")
    given = [(k, v) for k, v in (("n_per_class", n_per_class), ("n_total", n_total),
                                 ("fraction", fraction)) if v is not None]
    if len(given) > 1:
        raise ConfigError("give one of --n-per-class, --n-total, --fraction")
    reg = registry(ctx)
    cfg = load_config(config, reg)
    from ssltk.bench.grid import budgets

    budget = Budget(*given[0]) if given else budgets(cfg)[0]
    seed = cfg.seeds[0] if seed is None else seed
    f = cfg.finetune
    cohort = load_cohort(cfg)
    pool, val, test = base_split(cohort, f.val_fraction, f.test_fraction, seed, repeat)
    train = budget_subset(cohort, pool, budget, f"--{budget.kind.replace('_', '-')}")
    run = finetune_run(cfg, cohort, (train, val, test), mode, seed, encoder)
    info = {"benchmark": cfg.name, "benchmark_config_hash": cfg.content_hash(),
            "method": "scratch" if encoder is None else str(encoder), "mode": mode,
            "budget": budget.as_dict(), "seed": seed, "repeat": repeat}
    result = run_finetune(run, registry=reg, device=device, progress=True,
                          save_model=save_model, model_info=info)
    print_metrics(result.metrics, f"{'scratch' if encoder is None else encoder} - {mode}, "
                                  f"{budget.label}, seed {seed}: {len(train)} train / "
                                  f"{len(val)} val / {len(test)} test subjects")
    if out is not None:
        result.save(out)
        console().print(f"[green]wrote[/] {out}")
    if save_model is not None:
        console().print(f"[green]saved model[/] {save_model}")
