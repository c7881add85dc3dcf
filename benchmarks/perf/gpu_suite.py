"""One prepared GPU measurement of ssltk's training path: data, augmentation, steps, memory.

GPU time comes in short windows, so this is one command with a global time budget (default
270 s, a watchdog ends it at budget + 30 s), sections that record their error and let the next
one run, and results written after every measurement (``gpu_suite.json`` + ``gpu_suite.md``
in ``--out``). Sections, most important first:

* ``steps``: one SimCLR and one y-Aware pretraining step of the engine (``_Trainer._train_step``:
  prefetched batch, batched augmentation on the device, forward, backward, AdamW) for 3D
  ResNet-18 and DenseNet-121 at batch 32, 96^3: fp32, bf16 autocast, bf16 + channels_last_3d;
  steps/s, vol/s, peak memory, the share of the wall time spent blocked waiting for a batch,
  FLOPs per step (``torch.utils.flop_counter.FlopCounterMode``, forward + backward of the
  objective) and MFU against the device's dense peak for that dtype (:data:`PEAK_TFLOPS`).
* ``data_path``: store -> device batches at 96^3 and 121x145x121, vol/s: ssltk's
  :class:`~ssltk.data.prefetch.Prefetcher` (reader thread, pinned slots, side stream) and a
  plain read + copy, side by side with a ``DataLoader`` (workers, ``pin_memory``, default
  collate); then two augmented views on the device: the prefetcher + the batched default
  pipeline vs the ``DataLoader`` + MONAI per-sample transforms in the workers.
* ``augment``: the default pipeline on the device, batched (fused and unfused), vs MONAI's
  per-sample transforms on the device, ms/volume.
* ``max_batch``: the largest SimCLR batch (2 views) that trains a step at 121x145x121 in bf16,
  per model (doubling then bisection, out-of-memory caught, time-boxed). Last, because a CUDA
  error there may leave the device unusable.

    python benchmarks/perf/gpu_suite.py --out results/gpu             # one GPU, <= 5 min
    python benchmarks/perf/gpu_suite.py --device cpu --quick --out /tmp/suite   # smoke test
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # the budget counts from here: imports are part of the GPU window

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from augment import monai_runner, ours_runner, time_ms  # noqa: E402
from gpu_report import markdown  # noqa: E402
from store_read import OrderSampler, StoreItems, brain_volume, label, template  # noqa: E402
from train_step import _MonaiViews  # noqa: E402

from ssltk.augment import DEFAULT_PIPELINE, Pipeline  # noqa: E402
from ssltk.data import BatchReader, epoch_batches  # noqa: E402
from ssltk.data.prefetch import Prefetcher, load_batch  # noqa: E402
from ssltk.engine import PretrainRun, runtime  # noqa: E402
from ssltk.engine.optim import build_optimizer  # noqa: E402
from ssltk.engine.pretraining import _Paths, _Trainer, build_objective  # noqa: E402
from ssltk.interfaces import Batch  # noqa: E402
from ssltk.registry import get_registry  # noqa: E402
from ssltk.store import ColumnSpec, StoreWriter, VolumeStore  # noqa: E402

# Dense (no structured sparsity) peak tensor throughput per GPU, TFLOPS, from the vendor's
# datasheets. Matched on the tokens of torch.cuda.get_device_name(), first match wins.
# "tf32" is the basis of fp32 runs (PyTorch runs convolutions in TF32 by default).
PEAK_TFLOPS: list[tuple[tuple[str, ...], str, dict[str, float]]] = [
    (("GH200",), "GH200 (H100 SXM class)", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (("H200", "NVL"), "H200 NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (("H200",), "H200 SXM", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (("H100", "PCIE"), "H100 PCIe", {"bf16": 756.5, "tf32": 378.0, "fp32": 51.2}),
    (("H100", "NVL"), "H100 NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (("H100",), "H100 SXM", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (("A100",), "A100 (SXM4 or PCIe)", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (("L40S",), "L40S", {"bf16": 362.1, "tf32": 183.1, "fp32": 91.6}),
    (("L40",), "L40", {"bf16": 181.0, "tf32": 90.5, "fp32": 90.5}),
    (("L4",), "L4", {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    (("A10",), "A10", {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2}),
]


def peak_for(device_name: str) -> tuple[str, dict[str, float]] | None:
    """``(label, {dtype: TFLOPS})`` of the first :data:`PEAK_TFLOPS` entry the name matches."""
    tokens = set(re.split(r"[\s\-_/]+", device_name.upper()))
    for needed, name, peaks in PEAK_TFLOPS:
        if all(t in tokens for t in needed):
            return name, peaks
    return None


@dataclass
class Mode:
    data_shapes: list[tuple[int, int, int]]
    step_shape: tuple[int, int, int]
    max_batch_shape: tuple[int, int, int]
    volumes: int
    batch: int
    data_batches: int
    aug_batch: int
    aug_repeats: int
    warmup: int
    steps: int
    workers: int
    batch_start: int
    batch_cap: int
    budget_s: float
    enforce_budget: bool = True  # False: every config runs once, only the watchdog binds
    all_variants: bool = True  # False: bf16 only for the first model and objective
    backbone_params: dict[str, dict] = field(default_factory=dict)
    models: list[str] = field(default_factory=lambda: ["resnet18", "densenet121"])
    objectives: list[str] = field(default_factory=lambda: ["simclr", "yaware"])


def full_mode() -> Mode:
    return Mode(data_shapes=[(96,) * 3, (121, 145, 121)], step_shape=(96,) * 3,
                max_batch_shape=(121, 145, 121), volumes=64, batch=32, data_batches=12,
                aug_batch=32, aug_repeats=3, warmup=3, steps=12,
                workers=max(1, min(8, (os.cpu_count() or 2) - 2)), batch_start=32,
                batch_cap=2048, budget_s=270)


def quick_mode() -> Mode:
    """Every code path once, small: DenseNet-121 needs >= 32 voxels a side (5 halvings), and
    the networks are narrowed (same layers) so that CPU steps take a fraction of a second."""
    return Mode(data_shapes=[(32,) * 3, (32, 40, 32)], step_shape=(32,) * 3,
                max_batch_shape=(32, 40, 32), volumes=8, batch=2, data_batches=3, aug_batch=2,
                aug_repeats=1, warmup=0, steps=1, workers=0, batch_start=2, batch_cap=2,
                budget_s=1200, enforce_budget=False, all_variants=False,
                backbone_params={"resnet18": {"widen_factor": 0.25},
                                 "densenet121": {"init_features": 8, "growth_rate": 4}})


VARIANTS = [("fp32", False), ("bf16", False), ("bf16", True)]  # (precision, channels_last)
SECTIONS = ["env", "stores", "steps", "data_path", "augment", "max_batch"]
SHARES = {"env": 0.02, "stores": 0.08, "steps": 0.42, "data_path": 0.20, "augment": 0.07,
          "max_batch": 0.21}  # of the budget; a section may use what earlier ones left


# -- bookkeeping -----------------------------------------------------------------------------
class Results:
    """The JSON document, rewritten atomically (with the markdown) after every change."""

    def __init__(self, out: Path, meta: dict):
        self.out, self.lock = out, threading.RLock()
        self.doc: dict = {"suite": meta, **{s: {"status": "pending"} for s in SECTIONS}}
        self.save()

    def save(self) -> None:
        with self.lock:
            self.doc["suite"]["elapsed_s"] = round(time.perf_counter() - T0, 1)
            try:
                md = markdown(self.doc)
            except Exception as exc:  # noqa: BLE001  (the JSON matters more than its table)
                md = f"report failed ({error_text(exc)}); re-render with gpu_report.py\n"
            for name, text in (("gpu_suite.json", json.dumps(self.doc, indent=1, default=str)),
                               ("gpu_suite.md", md)):
                tmp = self.out / f".{name}.tmp"
                tmp.write_text(text)
                tmp.replace(self.out / name)

    def add_row(self, section: str, row: dict) -> None:
        with self.lock:
            self.doc[section].setdefault("rows", []).append(row)
            self.save()

    @contextlib.contextmanager
    def section(self, name: str, deadline: float) -> Iterator[dict]:
        sec = self.doc[name]
        budget = deadline - time.perf_counter()
        sec.update(status="running", budget_s=round(budget, 1) if budget < 1e9 else None)
        self.save()
        t0 = time.perf_counter()
        try:
            yield sec
            sec["status"] = "partial" if sec.get("errors") or sec.get("skipped") else "ok"
        except Exception as exc:  # noqa: BLE001  (record, and let the next section run)
            sec["status"] = "error"
            sec.setdefault("errors", []).append(error_text(exc))
            traceback.print_exc()
        finally:
            sec["seconds"] = round(time.perf_counter() - t0, 1)
            self.save()
            print(f"[{time.perf_counter() - T0:6.1f} s] {name}: {sec['status']}", flush=True)


def error_text(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def left(deadline: float) -> float:
    return deadline - time.perf_counter()


# -- env and stores --------------------------------------------------------------------------
def env_info(device: torch.device) -> dict:
    import h5py
    import monai

    info = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
            else None, "python": platform.python_version(), "numpy": np.__version__,
            "h5py": h5py.__version__, "monai": monai.__version__, "cpus": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "BLOSC_NTHREADS": os.environ.get("BLOSC_NTHREADS", "(unset: 1)"),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    if device.type != "cuda":
        info.update(name=f"CPU ({info['cpu']})", driver=None, peak=None,
                    peak_note="CPU: no peak table, MFU not computed")
        return info
    props = torch.cuda.get_device_properties(device)
    info.update(name=props.name, capability=f"{props.major}.{props.minor}",
                memory_gb=round(props.total_memory / 2**30, 1), sms=props.multi_processor_count,
                driver=nvidia_driver())
    peak = peak_for(props.name)
    info.update(peak=peak[1] if peak else None, peak_label=peak[0] if peak else None,
                peak_note=None if peak else f"unknown device '{props.name}': add its dense "
                "peak TFLOPS to PEAK_TFLOPS in benchmarks/perf/gpu_suite.py; MFU not computed")
    # Pay for the CUDA context, cuBLAS and cuDNN now, not in the first measurement.
    x = torch.randn(2, 1, 16, 16, 16, device=device)
    torch.nn.functional.conv3d(x, torch.randn(4, 1, 3, 3, 3, device=device)).sum().item()
    return info


def nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=15, check=True).stdout.split()
        return out[0] if out else None
    except (OSError, subprocess.SubprocessError):
        return None


def build_stores(tmp: Path, mode: Mode, distinct: int = 16) -> dict[str, Path]:
    """Default stores (float16 + zstd) of brain-like volumes with an age column, per shape.

    Volumes as in store_read.py (MNI152 template, gain, gamma, bias field, Rician noise,
    skull-stripped); ``distinct`` of them, cycled: building is seconds, not minutes.
    """
    shapes = {label(s): s for s in [*mode.data_shapes, mode.step_shape, mode.max_batch_shape]}
    rng = np.random.default_rng(0)
    stores = {}
    for name, shape in shapes.items():
        base = template(shape)
        volumes = [brain_volume(base, rng) for _ in range(min(distinct, mode.volumes))]
        path = tmp / f"synth_{name}.h5"
        with StoreWriter.create(path, shape=(1, *shape), dtype="float16", compression="zstd",
                                columns={"age": ColumnSpec("continuous", unit="years")}) as w:
            for i in range(mode.volumes):
                w.append(volumes[i % len(volumes)],
                         {"subject_id": f"sub-{i:04d}", "age": float(rng.uniform(45, 85))})
        stores[name] = path
    return stores


def plan(n_rows: int, batch: int, n_batches: int, seed: int = 0) -> list[np.ndarray]:
    """``n_batches`` batches over whole shuffled epochs of ``n_rows`` rows."""
    out: list[np.ndarray] = []
    epoch = 0
    while len(out) < n_batches:
        out += epoch_batches(np.arange(n_rows), batch, seed, epoch)
        epoch += 1
    return out[:n_batches]


# -- data path -------------------------------------------------------------------------------
def timed_batches(batches: Iterator, device: torch.device, deadline: float) -> dict:
    """vol/s of an iterator of device batches (each summed, so it really arrives)."""
    total, vols, t0 = None, 0, time.perf_counter()
    for xs in batches:
        xs = xs if isinstance(xs, (list, tuple)) else [xs]
        s = sum(x.sum() for x in xs)
        total = s if total is None else total + s
        vols += xs[0].shape[0]
        if time.perf_counter() > deadline:
            break
    if total is not None:
        float(total)  # waits for the device
    dt = time.perf_counter() - t0
    return {"vol_s": vols / dt, "volumes": vols, "seconds": round(dt, 3)}


def data_candidates(path: Path, shape, mode: Mode, device: torch.device,
                    batches: list[np.ndarray]) -> dict[str, Callable[[list], Iterator]]:
    reader = BatchReader(VolumeStore.open(path))
    pipeline = Pipeline.from_specs(get_registry(), DEFAULT_PIPELINE)
    cuda = device.type == "cuda"

    def prefetch(plan_, views=False):
        with Prefetcher(reader, plan_, device, depth=2, threaded=True) as source:
            for k, (x, _) in enumerate(source):
                yield pipeline.views(x, 2, runtime.step_generator(0, k)) if views else x

    def plain(plan_):
        for rows in plan_:
            yield load_batch(reader, rows, device)[0]

    def loader(dataset):
        sampler = OrderSampler()
        dl = torch.utils.data.DataLoader(dataset, batch_size=mode.batch, sampler=sampler,
                                         num_workers=mode.workers, pin_memory=cuda,
                                         persistent_workers=mode.workers > 0, drop_last=True)

        def run(plan_):
            sampler.order = [int(r) for rows in plan_ for r in rows]
            for item in dl:
                items = item if isinstance(item, (list, tuple)) else [item]
                yield [t.to(device, non_blocking=True) for t in items]
        return run

    w = f"{mode.workers} workers" + (", pin_memory" if cuda else "")
    return {
        "ssltk Prefetcher (thread, pinned, side stream)": prefetch,
        "ssltk BatchReader + copy (no prefetch)": plain,
        f"DataLoader ({w}) + default collate": loader(
            StoreItems(VolumeStore.open(path))),
        "ssltk Prefetcher + batched default pipeline on device, 2 views":
            lambda p: prefetch(p, views=True),
        f"DataLoader ({w}) + MONAI per-sample default pipeline, 2 views + collate":
            loader(_MonaiViews(path, shape, 2)),
    }


def section_data_path(res: Results, stores: dict, mode: Mode, device, deadline: float) -> None:
    batches_n = mode.data_batches
    todo = [(label(s), s) for s in mode.data_shapes]
    for i, (name, shape) in enumerate(todo):
        store_path = stores[name]
        n_rows = len(VolumeStore.open(store_path))
        batches = plan(n_rows, mode.batch, batches_n + 1, seed=1)
        cands = data_candidates(store_path, shape, mode, device, batches)
        n_cands = len(cands)
        for j, cand in enumerate(list(cands)):
            fn = cands.pop(cand)  # dropped after use: a DataLoader's workers end with it
            remaining = (len(todo) - i) * n_cands - j
            limit = time.perf_counter() + max(0.0, left(deadline)) / remaining
            row = {"shape": name, "candidate": cand, "batch": mode.batch}
            if left(deadline) < 1.0:
                row["skipped"] = "time budget"
                res.doc["data_path"]["skipped"] = True
            else:
                try:
                    for _ in fn(batches[:1]):  # warm-up: workers, cuDNN, allocator
                        pass
                    row.update(timed_batches(fn(batches[1:]), device, limit))
                except Exception as exc:  # noqa: BLE001
                    row["error"] = error_text(exc)
                    res.doc["data_path"].setdefault("errors", []).append(f"{cand}: {row['error']}")
            res.add_row("data_path", row)
            del fn
            free(device)


# -- augmentation ----------------------------------------------------------------------------
def section_augment(res: Results, mode: Mode, device, deadline: float) -> None:
    shape = mode.step_shape
    x = torch.rand(mode.aug_batch, 1, *shape, device=device)
    fns = {"MONAI per-sample": monai_runner(DEFAULT_PIPELINE, shape, None),
           "ssltk batched, unfused": ours_runner(DEFAULT_PIPELINE, None, fuse=False),
           "ssltk batched, fused (default)": ours_runner(DEFAULT_PIPELINE, None)}
    if left(deadline) < 2:
        res.doc["augment"]["skipped"] = "time budget"
        return
    ms = time_ms(list(fns.values()), x, mode.aug_repeats)
    for name, value in zip(fns, ms):
        res.add_row("augment", {"pipeline": name, "ms_per_volume": value,
                                "batch": mode.aug_batch, "shape": label(shape)})


# -- pretraining steps -----------------------------------------------------------------------
def make_trainer(store: Path, model: dict, objective: str, precision: str, channels_last: bool,
                 batch: int, device: torch.device, tmp: Path) -> _Trainer:
    run = PretrainRun(store=store, backbone=model, objective={"name": objective},
                      batch_size=batch, epochs=1000, precision=precision,
                      channels_last=channels_last)
    ctx = runtime.Context(device)
    out = tmp / f"{model['name']}-{objective}-{precision}-{int(channels_last)}"
    return _Trainer(run, get_registry(), ctx, _Paths(out), run.content_hash())


def time_steps(trainer: _Trainer, batches: list[np.ndarray], warmup: int, deadline: float,
               device: torch.device) -> dict:
    """The engine's own steps, prefetched as in ``pretrain``: wall-clock rates and data wait."""
    with trainer._prefetch(batches):
        source = trainer._source
        for rows in batches[:warmup]:
            trainer._train_step(rows)
        trainer.epoch_stats.flush()
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        trainer.epoch_stats = runtime.EpochStats()
        wait0, n, t0 = source.wait_s, 0, time.perf_counter()
        for rows in batches[warmup:]:
            trainer._train_step(rows)
            n += 1
            if time.perf_counter() > deadline:
                break
        stats = trainer.epoch_stats.summary()  # flushes: waits for the device
        sync(device)
        wall = time.perf_counter() - t0
        wait = source.wait_s - wait0
    batch = len(batches[0])
    return {"steps": n, "wall_s": round(wall, 3), "steps_s": n / wall, "vol_s": n * batch / wall,
            "data_wait_share": wait / wall, "host_data_share": stats["data_fraction"],
            "loss": stats.get("loss"),
            "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30
            if device.type == "cuda" else None}


def count_flops(trainer: _Trainer, rows: np.ndarray, device: torch.device) -> int:
    """FLOPs of the objective's forward + backward on one batch (augmentation not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    x, meta = load_batch(trainer.reader, rows, device, trainer.run.channels_last)
    gen = runtime.step_generator(0, 0)
    views = trainer.pipeline.views(x, trainer.objective.n_views, gen)
    batch = Batch(views=views, meta=meta, generator=gen,
                  original=x if trainer.objective.needs_original else None)
    trainer.objective.train()
    with FlopCounterMode(display=False) as counter:
        with runtime.autocast(trainer.run.precision, trainer.ctx):
            out = trainer.model(batch)
        out.loss.backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def mfu(flops: int | None, steps_s: float, precision: str, peak: dict | None) -> tuple:
    if not flops or not peak:
        return None, None
    basis = "bf16" if precision == "bf16" else (
        "tf32" if torch.backends.cudnn.allow_tf32 else "fp32")
    return flops * steps_s / (peak[basis] * 1e12), basis


def step_configs(mode: Mode, device: torch.device) -> list[tuple[str, str, str, bool, bool]]:
    """``(model, objective, precision, channels_last, cudnn_benchmark)`` of each step row."""
    first = (mode.models[0], mode.objectives[0])
    configs = [(m, o, p, cl, False) for m in mode.models for o in mode.objectives
               for p, cl in VARIANTS  # quick: bf16 (slow on CPUs) for the first pair only
               if mode.all_variants or p == "fp32" or (m, o) == first]
    if device.type == "cuda":  # the engine leaves cuDNN's autotuner off (PyTorch's default)
        configs.append((*first, "bf16", False, True))
    return configs


def section_steps(res: Results, stores: dict, mode: Mode, device, deadline: float,
                  tmp: Path) -> None:
    store = stores[label(mode.step_shape)]
    n_rows = len(VolumeStore.open(store))
    batches = plan(n_rows, mode.batch, mode.warmup + mode.steps, seed=2)
    configs = step_configs(mode, device)
    flops: dict[tuple[str, str], int] = {}
    peak = res.doc["env"].get("peak")
    for i, (model, objective, precision, cl, tune) in enumerate(configs):
        row = {"model": model, "objective": objective, "precision": precision,
               "channels_last": cl, "batch": mode.batch, "shape": label(mode.step_shape)}
        if tune:
            row["cudnn_benchmark"] = True
        slot = left(deadline) / (len(configs) - i)
        if slot < 1.0:
            row["skipped"] = "time budget"
            res.doc["steps"]["skipped"] = True
            res.add_row("steps", row)
            continue
        trainer, before = None, torch.backends.cudnn.benchmark
        try:
            torch.backends.cudnn.benchmark = before or tune
            spec = {"name": model, **mode.backbone_params.get(model, {})}
            trainer = make_trainer(store, spec, objective, precision, cl, mode.batch, device, tmp)
            row.update(time_steps(trainer, batches, mode.warmup,
                                  time.perf_counter() + 0.8 * slot, device))
            if (model, objective) not in flops and left(deadline) > 2:
                flops[(model, objective)] = count_flops(trainer, batches[0], device)
            row["tflop_per_step"] = flops.get((model, objective), 0) / 1e12 or None
            row["mfu"], row["mfu_basis"] = mfu(flops.get((model, objective)), row["steps_s"],
                                               precision, peak)
        except Exception as exc:  # noqa: BLE001  (an OOM in one config must not end the rest)
            row["error"] = error_text(exc)
            res.doc["steps"].setdefault("errors", []).append(
                f"{model}/{objective}/{precision}{'+cl' if cl else ''}: {row['error']}")
        finally:
            torch.backends.cudnn.benchmark = before
            del trainer
            free(device)
        res.add_row("steps", row)


# -- the largest batch -----------------------------------------------------------------------
FATAL = ("illegal memory access", "device-side assert", "unspecified launch failure")


def does_not_fit(exc: BaseException) -> bool:
    """Out of memory, or a kernel that refuses a tensor this large; False for anything else."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    msg = str(exc)
    if any(f in msg for f in FATAL):
        return False
    return isinstance(exc, RuntimeError) and any(s in msg for s in (
        "out of memory", "ALLOC_FAILED", "CUDNN_STATUS_NOT_SUPPORTED", "32-bit index",
        "canUse32BitIndexMath", "exceeds", "too large"))


def largest_batch(fits: Callable[[int], bool], start: int, cap: int, deadline: float) -> dict:
    """Doubling from ``start`` until a batch does not fit, then bisection (to ~3 %).

    Returns ``largest`` (fits), ``smallest_failing`` (None if none failed), ``trials`` and
    ``stopped`` ("converged", "cap" or "time budget").
    """
    lo, hi, trials, b = 0, None, [], start
    while hi is None:
        if b > cap:
            return {"largest": lo, "smallest_failing": None, "trials": trials, "stopped": "cap"}
        if time.perf_counter() > deadline:
            return {"largest": lo, "smallest_failing": None, "trials": trials,
                    "stopped": "time budget"}
        ok = fits(b)
        trials.append((b, ok))
        if ok:
            lo, b = b, b * 2
        else:
            hi = b
    while hi - lo > max(1, lo // 32):
        if time.perf_counter() > deadline:
            return {"largest": lo, "smallest_failing": hi, "trials": trials,
                    "stopped": "time budget"}
        mid = (lo + hi) // 2
        ok = fits(mid)
        trials.append((mid, ok))
        lo, hi = (mid, hi) if ok else (lo, mid)
    return {"largest": lo, "smallest_failing": hi, "trials": trials, "stopped": "converged"}


def step_fits(store: Path, model: dict, device: torch.device, notes: list) -> Callable:
    """``fits(b)``: does one bf16 SimCLR step (2 views, AdamW) of batch ``b`` run?"""
    run = PretrainRun(store=store, backbone=model, objective={"name": "simclr"},
                      batch_size=2, epochs=1, precision="bf16")
    vs = VolumeStore.open(store)
    objective = build_objective(run, vs, get_registry()).to(device)
    optimizer = build_optimizer(objective, run.optimizer)
    ctx = runtime.Context(device)

    def fits(b: int) -> bool:
        views = out = None
        try:
            views = [torch.rand(b, *vs.shape, device=device) for _ in range(objective.n_views)]
            with runtime.autocast("bf16", ctx):
                out = objective(Batch(views=views, generator=torch.Generator().manual_seed(0)))
            out.loss.backward()
            optimizer.step()
            sync(device)
            if device.type == "cuda":
                notes.append((b, torch.cuda.max_memory_allocated(device) / 2**30))
            return True
        except Exception as exc:  # noqa: BLE001
            if not does_not_fit(exc):
                raise
            notes.append((b, error_text(exc)))
            return False
        finally:
            del views, out
            optimizer.zero_grad(set_to_none=True)
            free(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)

    return fits


def section_max_batch(res: Results, stores: dict, mode: Mode, device, deadline: float) -> None:
    store = stores[label(mode.max_batch_shape)]
    for i, model in enumerate(mode.models):
        row = {"model": model, "objective": "simclr (2 views)", "precision": "bf16",
               "shape": label(mode.max_batch_shape)}
        notes: list = []
        try:
            fits = step_fits(store, {"name": model, **mode.backbone_params.get(model, {})},
                             device, notes)
            box = time.perf_counter() + left(deadline) / (len(mode.models) - i)
            row.update(largest_batch(fits, mode.batch_start, mode.batch_cap, box))
            good = [m for b, m in notes if b == row["largest"] and isinstance(m, float)]
            row["peak_mem_gb_at_largest"] = good[-1] if good else None
            row["failures"] = [f"{b}: {m}" for b, m in notes if isinstance(m, str)][:3]
        except Exception as exc:  # noqa: BLE001
            row["error"] = error_text(exc)
            res.doc["max_batch"].setdefault("errors", []).append(f"{model}: {row['error']}")
            if any(f in str(exc) for f in FATAL):
                res.add_row("max_batch", row)
                raise
        finally:
            free(device)
        res.add_row("max_batch", row)


# -- main ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_suite_out"),
                    help="folder for gpu_suite.json and gpu_suite.md")
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    ap.add_argument("--quick", action="store_true",
                    help="tiny shapes, batch 2, 1 step per config (the CI smoke test)")
    ap.add_argument("--budget", type=float, default=None,
                    help="global time budget in s (default 270; --quick 1200, not binding)")
    ap.add_argument("--sections", nargs="+", default=SECTIONS[2:], choices=SECTIONS[2:],
                    help="sections to run (env and stores always run)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers of the baselines")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's; 1 with --device cpu --quick, "
                         "which on a loaded machine is far faster than 2)")
    ap.add_argument("--tmp", type=Path, default=None, help="parent of the temporary stores")
    return ap.parse_args(argv)


def check_device(name: str) -> torch.device:
    """Fail in a second, before any work, when the device is not there."""
    try:
        device = torch.device(name)
    except RuntimeError:
        sys.exit(f"error: --device {name!r} is not a torch device; use cuda, cuda:N or cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch sees no CUDA device (torch "
                 f"{torch.__version__}, built for CUDA {torch.version.cuda}); use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def watchdog(res: Results, seconds: float) -> threading.Timer:
    """Ends the process when the budget is overrun by far (a hung kernel); results stay."""
    def fire() -> None:
        with res.lock:
            res.doc["suite"]["watchdog"] = f"ended by the watchdog after {seconds:.0f} s"
            res.save()
        print(f"watchdog: {seconds:.0f} s elapsed, exiting", file=sys.stderr, flush=True)
        os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = check_device(args.device)
    mode = quick_mode() if args.quick else full_mode()
    mode.budget_s = args.budget or mode.budget_s
    mode.workers = mode.workers if args.workers is None else args.workers
    threads = args.threads or (1 if args.quick and device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    args.out.mkdir(parents=True, exist_ok=True)
    res = Results(args.out, {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                             "started": datetime.datetime.now().isoformat(timespec="seconds"),
                             "mode": "quick" if args.quick else "full",
                             "budget_s": mode.budget_s, "finished": False,
                             "settings": {k: v for k, v in vars(mode).items()}})
    watchdog(res, mode.budget_s + 30)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # finally-blocks still save
    schedule, acc = {}, 0.0
    for s in SECTIONS:
        acc += SHARES[s]
        schedule[s] = T0 + acc * mode.budget_s if mode.enforce_budget else float("inf")
    with tempfile.TemporaryDirectory(prefix="ssltk_gpu_suite_", dir=args.tmp) as tmp:
        tmp = Path(tmp)
        stores: dict = {}
        with res.section("env", schedule["env"]) as sec:
            sec.update(env_info(device))
        with res.section("stores", schedule["stores"]) as sec:
            t = time.perf_counter()
            stores.update(build_stores(tmp, mode))
            sec.update(stores=sorted(stores), build_s=round(time.perf_counter() - t, 1),
                       volumes=mode.volumes)
        runners = {
            "steps": lambda d: section_steps(res, stores, mode, device, d, tmp),
            "data_path": lambda d: section_data_path(res, stores, mode, device, d),
            "augment": lambda d: section_augment(res, mode, device, d),
            "max_batch": lambda d: section_max_batch(res, stores, mode, device, d),
        }
        for name, run in runners.items():
            if name not in args.sections:
                res.doc[name] = {"status": "not run (--sections)"}
                continue
            if not stores:
                res.doc[name] = {"status": "error", "errors": ["no stores were built"]}
                continue
            with res.section(name, schedule[name]):
                run(max(schedule[name], time.perf_counter() + 1.0))
    res.doc["suite"]["finished"] = True
    res.save()
    print((args.out / "gpu_suite.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
