"""Pretraining throughput per objective, and the share of a step the data path takes.

For each objective: volumes/s of whole pretraining steps (read the batch from the store,
make the views, forward, backward, optimiser step) and the time of the data path alone (store
read into a reused buffer + batched, fused augmentation of every view). Side by side, the data
path a user would otherwise write: a torch DataLoader over the same store with MONAI per-sample
transforms making the views and the default collate.

    python benchmarks/perf/train_step.py                 # 64^3, ResNet-18, batch 8, CPU
    python benchmarks/perf/train_step.py --quick         # 32^3, ResNet-10, 2 objectives
    python benchmarks/perf/train_step.py --device cuda --size 96 --batch 16
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from augment import monai_runner  # noqa: E402  (same MONAI equivalents as the augment bench)

from ssltk.augment import DEFAULT_PIPELINE  # noqa: E402
from ssltk.engine import PretrainRun  # noqa: E402
from ssltk.engine.pretraining import _Paths, _Trainer  # noqa: E402
from ssltk.engine import runtime  # noqa: E402
from ssltk.registry import get_registry  # noqa: E402
from ssltk.store import VolumeStore  # noqa: E402
from ssltk.store.synth import make_cohort  # noqa: E402


def make_store(path: Path, size: int, subjects: int) -> Path:
    if not path.exists():
        make_cohort(path, subjects=subjects, shape=(size,) * 3, seed=0)
    return path


def time_objective(store: Path, objective: str, args, registry, out: Path) -> dict:
    run = PretrainRun(store=store, backbone={"name": args.backbone}, objective={"name": objective},
                      batch_size=args.batch, epochs=1, precision=args.precision,
                      channels_last=args.channels_last)
    ctx = runtime.Context(runtime.resolve_device(args.device))
    trainer = _Trainer(run, registry, ctx, _Paths(out / objective), run.content_hash())
    rows = np.arange(len(trainer.store))
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            trainer.epoch_stats = runtime.EpochStats()
        trainer._train_step(rows[(i * args.batch) % (len(rows) - args.batch):][:args.batch])
    s = trainer.epoch_stats
    return {"objective": objective, "views": trainer.objective.n_views,
            "step_s": s.step_time / s.steps, "vol_s": s.volumes / s.step_time,
            "data_ms": 1000 * s.data_time / s.steps, "data_share": s.data_time / s.step_time}


class _MonaiViews(torch.utils.data.Dataset):
    """What a user would write: one volume per item, views by MONAI per-sample transforms."""

    def __init__(self, store: Path, size: int | tuple[int, ...], n_views: int):
        self.store, self.n_views = VolumeStore.open(store), n_views
        self.chain = monai_runner(DEFAULT_PIPELINE, size, None)

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.store[i])[None]
        return tuple(self.chain(x)[0] for _ in range(self.n_views))


def time_data_paths(store: Path, args) -> dict:
    """ms per batch of 2 views: ssltk's data path vs DataLoader + MONAI + default collate."""
    from ssltk.augment import Pipeline
    from ssltk.data.loading import BatchReader

    reader = BatchReader(VolumeStore.open(store))
    pipeline = Pipeline.from_specs(get_registry(), DEFAULT_PIPELINE)
    n = len(reader.store) // args.batch * args.batch
    batches = [np.arange(i, i + args.batch) for i in range(0, n, args.batch)]

    def ours() -> None:
        for step, rows in enumerate(batches):
            x, _ = reader.read(rows)
            pipeline.views(x, 2, runtime.step_generator(0, step))

    loader = torch.utils.data.DataLoader(_MonaiViews(store, args.size, 2), batch_size=args.batch,
                                         num_workers=args.workers, drop_last=True)

    def theirs() -> None:
        for _ in loader:
            pass

    times = {"ssltk": [], "monai": []}
    for _ in range(args.repeats):
        for name, fn in (("ssltk", ours), ("monai", theirs)):
            t0 = time.perf_counter()
            fn()
            times[name].append(1000 * (time.perf_counter() - t0) / len(batches))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--subjects", type=int, default=48)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--objectives", nargs="*", default=None)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the MONAI path")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--store", type=Path, default=None, help="reuse this synthetic store")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.size, args.subjects, args.backbone, args.steps = 32, 24, "resnet10", 2
        args.objectives = args.objectives or ["simclr", "genesis"]
    torch.set_num_threads(args.threads)
    registry = get_registry()
    objectives = args.objectives or registry.names("objectives")
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or Path(tmp) / f"synth{args.size}.h5"
        make_store(store, args.size, args.subjects)
        rows = [time_objective(store, o, args, registry, Path(tmp)) for o in objectives]
        paths = time_data_paths(store, args)
    print(f"\n{platform.processor() or platform.machine()}, {args.threads} threads, "
          f"device {args.device}, {args.backbone} at {args.size}^3, batch {args.batch}, "
          f"{args.precision}, mean of {args.steps} steps after {args.warmup} warm-up\n")
    print("| objective | views | s / step | volumes / s | data path ms / step | data share |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['objective']} | {r['views']} | {r['step_s']:.2f} | {r['vol_s']:.1f} | "
              f"{r['data_ms']:.0f} | {100 * r['data_share']:.1f}% |")
    print(f"\nData path alone, batch {args.batch}, 2 views (median of {args.repeats}):\n")
    print("| data path | ms / batch | ratio |")
    print("|---|---|---|")
    print(f"| ssltk: read_into reused buffer + batched fused augmentation | {paths['ssltk']:.0f} "
          f"| {paths['monai'] / paths['ssltk']:.2f}x faster |")
    print(f"| DataLoader ({args.workers} workers) + MONAI per-sample + default collate | "
          f"{paths['monai']:.0f} | 1.00x |")


if __name__ == "__main__":
    main()
