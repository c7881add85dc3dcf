"""The baseline rows of a benchmark grid beside random init: ``random_init_bn`` and ``raw_input``.

Each is a job without training, like an external encoder (:mod:`ssltk.bench.external`), whose
cells are probed frozen on the very splits of every other method (same ``split_hash``):

* ``random_init_bn``, one job per seed: the random-init encoder of that seed (the weights the
  ``scratch`` cells of the seed probe) with its batch-norm statistics re-estimated on the
  pretraining pool (:func:`ssltk.engine.baselines.fit_batch_norm`), written once as
  ``RUN_DIR/pretrain/random_init_bn-seed<S>-<hash>/encoder.pt`` and probed like any encoder.
  A backbone without BatchNorm gets no change: its rows equal random init's, and say so.
* ``raw_input``, one job for every seed: the probe reads the input volume average-pooled to
  at most 4096 values (:class:`ssltk.engine.baselines.RawInput`) instead of an encoder.

A job's content hash holds what determines it, so its cells have stable keys and a resumed
run skips the finished ones.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssltk.bench.stats import RANDOM_INIT_BN, RAW_INPUT, SCRATCH
from ssltk.config import BenchmarkConfig
from ssltk.engine.baselines import MAX_RAW_FEATURES, fit_batch_norm, raw_input_grid
from ssltk.engine.checkpoint import load_checkpoint, save_checkpoint
from ssltk.engine.runtime import Context, resolve_device, seed_everything
from ssltk.data.loading import BatchReader
from ssltk.registry import Registry
from ssltk.store import VolumeStore

__all__ = ["METHOD_OF", "BaselineJob", "baseline_jobs", "materialise_baseline",
           "runs_random_init"]

METHOD_OF = {"random_init": SCRATCH, "random_init_bn": RANDOM_INIT_BN, "raw_input": RAW_INPUT}
"""``[finetune] baselines`` name -> the method id of its rows."""
SAME_AS_RANDOM_INIT = ("the backbone has no batch norm (group or instance norm): nothing to "
                       "fit, so this row equals random init (frozen)")


@dataclass
class BaselineJob:
    """One baseline encoder (``random_init_bn`` of one seed) or the raw input (every seed).

    ``ident`` is what determines its features; its cells run in frozen mode only.
    """

    method: str
    seed: int | None
    ident: dict = field(default_factory=dict)
    modes: tuple[str, ...] = ("frozen",)

    def content_hash(self) -> str:
        text = json.dumps({"baseline": self.method, **self.ident}, sort_keys=True,
                          separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def key(self) -> str:
        return self.content_hash()[:16]

    def out_dir(self, run_dir: Path) -> Path:
        seed = "" if self.seed is None else f"-seed{self.seed}"
        return run_dir / "pretrain" / f"{self.method}{seed}-{self.key[:8]}"

    def describe(self) -> dict:
        """The ``pretrain`` field of this job's results lines."""
        return {"baseline": self.method, **self.ident, "hash": self.content_hash()}


def runs_random_init(config: BenchmarkConfig) -> bool:
    """Whether the grid has the ``scratch`` rows (``random_init`` in ``finetune.baselines``)."""
    return "random_init" in config.finetune.baselines


def baseline_jobs(config: BenchmarkConfig) -> list[BaselineJob]:
    """The ``random_init_bn`` job of each seed and the ``raw_input`` job, as far as
    ``finetune.baselines`` names them and ``finetune.modes`` has frozen."""
    wanted = config.finetune.baselines
    if "frozen" not in config.finetune.modes:
        return []
    jobs = []
    if "random_init_bn" in wanted:
        pool = {"store": str(config.data.pretrain_stores()[0]), "rows": None,
                "batch_size": config.pretrain.batch_size}
        backbone = config.backbone.model_dump(mode="json")
        jobs += [BaselineJob(RANDOM_INIT_BN, seed, {"backbone": backbone, "seed": seed,
                                                    "pool": pool})
                 for seed in config.seeds]
    if "raw_input" in wanted:
        jobs.append(BaselineJob(RAW_INPUT, None, {"max_features": MAX_RAW_FEATURES}))
    return jobs


def materialise_baseline(job: BaselineJob, run_dir: Path, store: str | Path, registry: Registry,
                         device: str) -> tuple[Path | None, dict]:
    """The encoder the job's cells load (None for the raw input) and the facts its results
    lines record under ``baseline``.

    Args:
        store: the finetuning store (its channels and dimensions build the encoder).
    """
    with VolumeStore.open(store) as s:
        shape, dims = tuple(s.shape), s.spatial_dims
    if job.method == RAW_INPUT:
        grid = raw_input_grid(shape)
        return None, {"features": int(shape[0] * np.prod(grid)), "grid": list(grid)}
    out = job.out_dir(run_dir) / "encoder.pt"
    if out.exists():
        return out, load_checkpoint(out)[1]["baseline"]
    ctx = Context(resolve_device(device))
    seed_everything(job.seed)  # the weights the scratch cells of this seed build
    backbone = registry.build("backbones", job.ident["backbone"], "backbone",
                              in_channels=shape[0], spatial_dims=dims).to(ctx.device)
    pool = job.ident["pool"]
    with VolumeStore.open(pool["store"]) as pool_store:
        rows = np.arange(len(pool_store))
        fit = fit_batch_norm(backbone, BatchReader(pool_store), rows, pool["batch_size"], ctx)
    facts = {"bn_layers": fit.layers, "pool_store": pool["store"], "pool_rows": fit.rows,
             "batches": fit.batches, "same_as_random_init": fit.layers == 0}
    if fit.layers == 0:
        facts["note"] = SAME_AS_RANDOM_INIT
    state = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
    meta = {"backbone": job.ident["backbone"]["name"], "baseline": facts}
    return save_checkpoint(out, {"backbone": state}, meta), facts
