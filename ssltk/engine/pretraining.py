"""Self-supervised pretraining of a backbone with any registered objective.

>>> from ssltk.engine import PretrainRun, pretrain
>>> run = PretrainRun(store="data/synth.h5", backbone={"name": "resnet18"},
...                   objective={"name": "simclr"}, epochs=2, batch_size=8)
>>> result = pretrain(run, "runs/simclr")          # resumes if runs/simclr has a checkpoint
>>> result.encoder_path                            # the backbone's weights, ready to finetune

Everything that changes the result lives in :class:`PretrainRun` and its hash; how the run is
executed (device, checkpoint interval, progress bar) does not.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ssltk.augment import Pipeline, default_pipeline
from ssltk.data.loading import BatchReader, epoch_batches, rank_slice
from ssltk.data.prefetch import Prefetcher, load_batch
from ssltk.engine import runtime
from ssltk.engine.checkpoint import (
    check_compatible,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ssltk.engine.monitor import build_monitor
from ssltk.engine.optim import build_optimizer, clip_gradients, cosine_schedule
from ssltk.engine.runs import PretrainRun
from ssltk.errors import SsltkError
from ssltk.interfaces import Batch, Objective, ObjectiveOutput, TwoStepOptimizer
from ssltk.registry import Registry, get_registry
from ssltk.store import VolumeStore

__all__ = ["NonFiniteLossError", "PretrainResult", "PretrainRun", "build_objective",
           "make_pipeline", "pretrain"]
log = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    encoder_path: Path
    checkpoint_path: Path
    config_hash: str
    history: list[dict] = field(default_factory=list)
    cached: bool = False


class NonFiniteLossError(SsltkError):
    """The loss became NaN or Inf."""


@dataclass
class _StepState:
    """What a forward pass may change besides the weights: the module's buffers and the
    state of the batch's generator (for a two-step optimiser's second pass)."""

    buffers: list[torch.Tensor]
    generator: torch.Tensor | None

    @classmethod
    def take(cls, module: torch.nn.Module, generator: torch.Generator | None) -> _StepState:
        return cls([b.detach().clone() for b in module.buffers()],
                   None if generator is None else generator.get_state())

    def swap_into(self, module: torch.nn.Module,
                  generator: torch.Generator | None = None) -> _StepState:
        """Put this state into ``module`` (and ``generator``); return the one it replaced."""
        current = _StepState.take(module, generator)
        with torch.no_grad():
            for b, saved in zip(module.buffers(), self.buffers, strict=True):
                b.copy_(saved)
        if generator is not None and self.generator is not None:
            generator.set_state(self.generator)
        return current


def build_objective(run: PretrainRun, store: VolumeStore, registry: Registry) -> Objective:
    """Backbone + anchor + objective from the run's specs, validated with TOML paths."""
    backbone = registry.build("backbones", run.backbone, "backbone",
                              in_channels=store.shape[0], spatial_dims=store.spatial_dims)
    return registry.build("objectives", run.objective, "objective", backbone=backbone)


def make_pipeline(run: PretrainRun, registry: Registry, spatial_dims: int = 3,
                  objective: Objective | None = None) -> Pipeline:
    """The run's view pipeline: its ``augmentations``, else the objective's own (a preset's),
    else :func:`~ssltk.augment.default_pipeline`."""
    specs = run.augmentations
    if specs is None and objective is not None:
        specs = objective.view_pipeline(spatial_dims)
    if specs is None:
        specs = default_pipeline(spatial_dims)
    return Pipeline.from_specs(registry, specs, path="augmentations")


def pretrain(run: PretrainRun, out_dir: str | Path, *, registry: Registry | None = None,
             device: str = "auto", checkpoint_every: int | None = None,
             progress: bool = False) -> PretrainResult:
    """Pretrain ``run.backbone`` with ``run.objective``; resume or reuse what ``out_dir`` holds.

    Args:
        run: what to train (its hash is checked against any checkpoint in ``out_dir``).
        out_dir: gets ``checkpoint.pt`` (full state, for resuming), ``encoder.pt`` (the final
            backbone), ``history.jsonl`` (one line per epoch, after a line of
            representation monitors at random init: ssltk.engine.monitor) and ``run.json``.
        device: "auto" (CUDA if present), "cpu", "cuda", "cuda:1"...
        checkpoint_every: also checkpoint every this many steps (default: each epoch end).
        progress: show a rich progress bar.

    Raises:
        SsltkError: a missing column, a checkpoint of another config, a non-finite loss (the
            last good checkpoint is kept).
    """
    registry = registry or get_registry()
    out = Path(out_dir)
    ctx = runtime.setup(device)
    paths = _Paths(out)
    config_hash = run.content_hash()
    cached = _finished(paths, config_hash)
    if cached is not None:
        return cached
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        paths.run.write_text(json.dumps(run.model_dump(mode="json"), indent=2))
    trainer = _Trainer(run, registry, ctx, paths, config_hash)
    history = trainer.fit(checkpoint_every, progress)
    return PretrainResult(paths.encoder, paths.checkpoint, config_hash, history)


@dataclass
class _Paths:
    root: Path

    def __post_init__(self):
        self.checkpoint = self.root / "checkpoint.pt"
        self.encoder = self.root / "encoder.pt"
        self.history = self.root / "history.jsonl"
        self.run = self.root / "run.json"


def _finished(paths: _Paths, config_hash: str) -> PretrainResult | None:
    if not paths.encoder.exists():
        return None
    _, meta = load_checkpoint(paths.encoder)
    check_compatible(meta, {"config_hash": config_hash}, source=str(paths.encoder))
    history = [json.loads(line) for line in paths.history.read_text().splitlines()] \
        if paths.history.exists() else []
    return PretrainResult(paths.encoder, paths.checkpoint, config_hash, history, cached=True)


class _Trainer:
    """State of one pretraining run; ``fit`` runs (or resumes) it."""

    def __init__(self, run: PretrainRun, registry: Registry, ctx: runtime.Context,
                 paths: _Paths, config_hash: str):
        self.run, self.ctx, self.paths, self.config_hash = run, ctx, paths, config_hash
        if run.batch_size % ctx.world != 0:
            raise SsltkError(f"batch_size {run.batch_size} is not divisible by the "
                             f"{ctx.world} processes; choose a multiple of {ctx.world}")
        self.store = VolumeStore.open(run.store)
        runtime.seed_everything(run.seed)  # same initial weights on every rank
        self.objective = build_objective(run, self.store, registry).to(ctx.device)
        if run.channels_last:
            self.objective = self.objective.to(memory_format=runtime.channels_last(self.store))
        self.reader = BatchReader(self.store, self.objective.required_columns())
        self.pipeline = make_pipeline(run, registry, self.store.spatial_dims, self.objective)
        self.rows = np.arange(len(self.store)) if run.rows is None else np.asarray(run.rows)
        self.steps_per_epoch = len(self.rows) // run.batch_size
        if self.steps_per_epoch == 0:
            raise SsltkError(f"{run.store} has {len(self.rows)} volumes to pretrain on, fewer "
                             f"than one batch of {run.batch_size}; lower batch_size")
        self.total_steps = self.steps_per_epoch * run.epochs
        self.optimizer = build_optimizer(self.objective, run.optimizer, registry)
        warmup = round(run.optimizer.warmup_epochs * self.steps_per_epoch)
        self.scheduler = cosine_schedule(self.optimizer, self.total_steps, warmup,
                                         run.optimizer.min_lr_ratio)
        self.model = runtime.wrap_ddp(self.objective, ctx)
        self.monitor = build_monitor(run.monitor, self.store, self.rows, ctx.device,
                                     run.precision, ctx.is_main)
        self.step, self.epoch_stats = 0, runtime.EpochStats()
        # No host synchronisation inside a GPU step: losses are checked every sync_every steps.
        self.watch, self.sync_every = runtime.NonFiniteWatch(), runtime.sync_interval(ctx)
        self._source: Prefetcher | None = None
        self._resume()

    # -- checkpoints -------------------------------------------------------------------------
    def _meta(self) -> dict:
        return {"config_hash": self.config_hash, "step": self.step,
                "epoch": self.step // self.steps_per_epoch,
                "backbone": self.run.backbone.name, "objective": self.run.objective.name,
                **runtime.provenance()}

    def _save(self) -> None:
        self._check_finite()
        if not self.ctx.is_main:
            return
        state = {"objective": self.objective.state_dict(),
                 "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(),
                 "rng": rng_state(), "epoch_stats": self.epoch_stats.as_dict()}
        save_checkpoint(self.paths.checkpoint, state, self._meta())

    def _resume(self) -> None:
        if not self.paths.checkpoint.exists():
            return
        state, meta = load_checkpoint(self.paths.checkpoint, map_location=self.ctx.device)
        check_compatible(meta, {"config_hash": self.config_hash},
                         source=str(self.paths.checkpoint))
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.epoch_stats = runtime.EpochStats.from_dict(state["epoch_stats"])
        self.step = int(meta["step"])
        log.info("resuming %s at step %d", self.paths.root, self.step)

    # -- training ----------------------------------------------------------------------------
    def fit(self, checkpoint_every: int | None, progress: bool) -> list[dict]:
        bar = runtime.ProgressBar(self.total_steps, f"pretrain {self.run.objective.name}",
                                  enabled=progress and self.ctx.is_main, completed=self.step)
        self.monitor.start(self.step, self.objective, self.paths.history)
        with bar:
            while self.step < self.total_steps:
                epoch, first = divmod(self.step, self.steps_per_epoch)
                batches = epoch_batches(self.rows, self.run.batch_size, self.run.seed, epoch)
                mine = [rank_slice(rows, self.ctx.rank, self.ctx.world) for rows in batches[first:]]
                with self._prefetch(mine):
                    for rows in mine:
                        self._train_step(rows)
                        if self.step % self.sync_every == 0:
                            bar.update(self.epoch_stats)
                        else:
                            bar.update_plain()
                        if checkpoint_every and self.step % checkpoint_every == 0:
                            self._save()
                self._end_epoch(epoch)
        self._export()
        runtime.barrier(self.ctx)
        history = runtime.read_history(self.paths.history)
        self.monitor.finish(history)
        return history

    @contextlib.contextmanager
    def _prefetch(self, batches: list[np.ndarray]):
        """Batches read ahead while the steps run (thread + side CUDA stream on GPU; in order)."""
        with Prefetcher(self.reader, batches, self.ctx.device,
                        channels_last=self.run.channels_last) as self._source:
            try:
                yield
            finally:
                self._source = None

    def _check_finite(self) -> None:
        bad = self.watch.first()
        if bad is not None:
            step, loss = bad
            raise NonFiniteLossError(
                f"loss became {loss} at step {step} (epoch {step // self.steps_per_epoch}); "
                f"{self.paths.checkpoint} keeps the last good state. Lower optimizer.lr or set "
                "optimizer.grad_clip")

    def _train_step(self, rows: np.ndarray) -> None:
        t0 = time.perf_counter()
        x, meta = self._source.take(rows) if self._source is not None else \
            load_batch(self.reader, rows, self.ctx.device, self.run.channels_last)
        generator = runtime.step_generator(self.run.seed, self.step, self.ctx.rank)
        views = self.pipeline.views(x, self.objective.n_views, generator)
        batch = Batch(views=views, meta=meta, generator=generator,
                      original=x if self.objective.needs_original else None)
        t_data = time.perf_counter() - t0
        self.objective.train()
        two_step = isinstance(self.optimizer, TwoStepOptimizer)
        before = _StepState.take(self.objective, generator) if two_step else None
        out = self._forward(batch)
        if (self.step + 1) % self.sync_every == 0:
            self._check_finite()
        self._backward(out.loss)
        if two_step:
            self._second_pass(batch, before)
        if self.run.optimizer.grad_clip:
            clip_gradients(self.objective, self.run.optimizer.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.objective.on_step_end()
        self.step += 1
        self.epoch_stats.add(out, len(rows) * self.ctx.world, t_data, time.perf_counter() - t0,
                             self.scheduler.get_last_lr()[0])

    def _forward(self, batch: Batch) -> ObjectiveOutput:
        """The objective at the current weights (under autocast), its loss watched for NaN."""
        with runtime.autocast(self.run.precision, self.ctx):
            out = self.model(batch)
        self.watch.observe(out.loss, self.step)
        return out

    def _backward(self, loss: torch.Tensor) -> None:
        """``p.grad`` = the gradient of ``loss`` (all-reduced by DDP's backward)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def _second_pass(self, batch: Batch, before: _StepState) -> None:
        """A two-step optimiser's (SAM's) second pass: the gradient at the moved weights.

        The first pass's gradient is all-reduced already (no ``no_sync``), so every rank moves
        its weights identically. The second pass sees exactly what the first saw: the buffers
        as they were before it (MoCo's queue without this step's keys, batch-norm statistics,
        running label statistics) and the same random draws from the batch generator; after it,
        the buffers are put back as the first pass left them, so state that a forward updates
        is updated once per step, at the weights being trained. ``grad_clip`` then clips the
        gradient of this pass, the one applied (clipping the first would not change SAM's
        perturbation, which is normalised).
        """
        after = before.swap_into(self.objective, batch.generator)
        self.optimizer.first_step()
        # its loss is watched too: a NaN here must not reach a checkpoint either
        self._backward(self._forward(batch).loss)
        after.swap_into(self.objective)

    def _end_epoch(self, epoch: int) -> None:
        self._check_finite()
        record = {"epoch": epoch, "step": self.step, **self.epoch_stats.summary(),
                  **self.monitor.epoch_end(epoch, self.run.epochs, self.objective)}
        self.epoch_stats = runtime.EpochStats()
        if self.ctx.is_main:
            with self.paths.history.open("a") as f:
                f.write(json.dumps(record) + "\n")
            log.info("epoch %d: %s", epoch, record)
        self._save()

    def _export(self) -> None:
        self._check_finite()
        if self.ctx.is_main:
            save_checkpoint(self.paths.encoder, {"backbone": self.objective.backbone.state_dict()},
                            self._meta())
