"""Execution details shared by the training loops: devices, distributed set-up, seeding,
precision, per-epoch statistics and the progress bar. Nothing here changes *what* is trained.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

from ssltk.engine.checkpoint import package_versions
from ssltk.errors import SsltkError


def provenance() -> dict:
    """What every checkpoint and result records about the software that made it."""
    return {"versions": package_versions()}


def numerics(device: str | torch.device) -> dict:
    """What, besides the software, changes a run's float results (docs/reproducibility.md):
    torch's vectorised CPU kernels (``ATEN_CPU_CAPABILITY``), the thread count (reduction
    order) and the device (a GPU model, or the CPU model)."""
    dev = resolve_device(str(device))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_model()
    return {"device": str(dev), "device_name": name,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


@dataclass
class Context:
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present else CPU; a device that does not exist is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SsltkError(f"device '{device}' is not a valid torch device; use cpu, cuda or "
                         "cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0 or (dev.index is not None and dev.index >= count):
            raise SsltkError(f"device '{device}' does not exist here ({count} CUDA device(s)); "
                             "use cpu or an existing cuda:N")
    return dev


def setup(device: str = "auto") -> Context:
    """Context of this process; joins the process group when launched by torchrun.

    Under torchrun (``WORLD_SIZE`` > 1) each rank takes ``cuda:LOCAL_RANK`` with NCCL on GPU, or
    the CPU with gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Context(resolve_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Context(dev, dist.get_rank(), dist.get_world_size())


def wrap_ddp(module: nn.Module, ctx: Context) -> nn.Module:
    """DDP around ``module`` when distributed (SyncBN on GPU), else the module itself."""
    if not ctx.distributed:
        return module
    if ctx.device.type == "cuda" and getattr(module, "sync_batchnorm", True):
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def sync(ctx: Context) -> None:
    """Wait for queued GPU work, so step timings are real."""
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The augmentation generator of one step: a pure function of (seed, step, rank)."""
    key = np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(key))


def channels_last(store) -> torch.memory_format:
    return torch.channels_last_3d if store.spatial_dims == 3 else torch.channels_last


def to_device(x: Tensor, ctx: Context, channels_last_: bool) -> Tensor:
    x = x.to(ctx.device, non_blocking=True)
    if channels_last_:
        x = x.contiguous(memory_format=torch.channels_last_3d if x.dim() == 5
                         else torch.channels_last)
    return x


def autocast(precision: str, ctx: Context):
    """bf16 autocast when asked (or ``auto`` on CUDA), else a no-op context.

    On the CPU, convolutions whose input is smaller than their kernel run in float32
    (:class:`CpuTinyConvsInFloat32`).
    """
    use_bf16 = precision == "bf16" or (precision == "auto" and ctx.device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    if ctx.device.type != "cpu":
        return torch.autocast(ctx.device.type, dtype=torch.bfloat16)
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
    stack.enter_context(CpuTinyConvsInFloat32())
    return stack


# (function, index of ``dilation`` among its positional arguments)
_CONVS = {torch.conv1d: 5, torch.conv2d: 5, torch.conv3d: 5, torch.conv_transpose1d: 7,
          torch.conv_transpose2d: 7, torch.conv_transpose3d: 7}


def _smaller_than_kernel(func, args: tuple, kwargs: dict) -> bool:
    x, weight = args[0], args[1]
    dilation = kwargs.get("dilation", args[_CONVS[func]] if len(args) > _CONVS[func] else 1)
    dilation = [dilation] * (weight.dim() - 2) if isinstance(dilation, int) else list(dilation)
    extent = [(k - 1) * d + 1 for k, d in zip(weight.shape[2:], dilation)]
    return any(s < e for s, e in zip(x.shape[-len(extent):], extent))


class CpuTinyConvsInFloat32(torch.overrides.TorchFunctionMode):
    """Under CPU bf16 autocast, a convolution whose input is smaller than its kernel along some
    axis (a 3^3 kernel on a 1^3 or 2^3 feature map: a ResNet's last stage at 16^3 inputs) runs
    in float32.

    torch 2.13's oneDNN bf16 kernels compute the weight gradient of such a convolution (plain
    or transposed) from uninitialised memory: NaN, or finite values off by 10^36, in 2-22 % of
    calls, depending on what the allocator held before; once it aborted the process with a
    heap corruption (measured with ``benchmarks/perf/bf16_tiny_conv.py``). Inputs at least as
    large as the kernel were exact in every case tried. These layers cost next to nothing, so
    float32 there costs nothing measurable.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CONVS and _smaller_than_kernel(func, args, kwargs):
            with torch.autocast("cpu", enabled=False):
                args = tuple(a.float() if isinstance(a, Tensor) else a for a in args)
                kwargs = {k: v.float() if isinstance(v, Tensor) else v
                          for k, v in kwargs.items()}
                return func(*args, **kwargs)
        return func(*args, **kwargs)


SYNC_EVERY = 50
"""Steps between the host synchronisations of a GPU run (statistics, non-finite loss check)."""


def sync_interval(ctx: Context) -> int:
    """Every step on the CPU (a synchronisation costs nothing there), else :data:`SYNC_EVERY`."""
    return 1 if ctx.device.type == "cpu" else SYNC_EVERY


@dataclass
class EpochStats:
    """Running sums of one epoch: loss, logs, throughput, data share, embedding geometry.

    :meth:`add` keeps tensor values (the loss, 0-d tensor logs) on their device and converts them
    to floats only every ``flush_every`` steps and when read (:meth:`summary`,
    :meth:`as_dict`), so a GPU step is not stalled by a host synchronisation. The sums are the
    same float64 sums, in the same order, as adding each step's floats at once. The time a
    flush waits for the device is counted as step time (it is the tail of the steps it waits
    for).
    """

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    volumes: int = 0
    data_time: float = 0.0
    step_time: float = 0.0
    lr: float = 0.0
    flush_every: int = field(default=SYNC_EVERY, repr=False)
    _pending: dict[str, list] = field(default_factory=dict, repr=False)
    _unflushed: int = field(default=0, repr=False)

    def add(self, out, volumes: int, data_time: float, step_time: float, lr: float) -> None:
        """One step: ``out.loss``, ``out.logs`` (floats or 0-d tensors), embedding geometry."""
        values = {"loss": out.loss, **out.logs}
        if out.embeddings is not None and out.embeddings.shape[0] >= 2:
            values.update(alignment_uniformity(out.embeddings.detach().float()))
        for k, v in values.items():
            self._pending.setdefault(k, []).append(v.detach() if isinstance(v, Tensor) else v)
        self.steps += 1
        self.volumes += volumes
        self.data_time += data_time
        self.step_time += step_time
        self.lr = lr
        self._unflushed += 1
        if self._unflushed >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Convert the pending values to floats (one host synchronisation per device)."""
        t0 = time.perf_counter()
        for k, items in self._pending.items():
            for v in _as_floats(items):
                self.sums[k] = self.sums.get(k, 0.0) + v
        self._pending.clear()
        self._unflushed = 0
        self.step_time += time.perf_counter() - t0

    def summary(self) -> dict[str, float]:
        self.flush()
        n = max(self.steps, 1)
        return {**{k: v / n for k, v in self.sums.items()}, "lr": self.lr,
                "volumes_per_s": self.volumes / max(self.step_time, 1e-9),
                "data_fraction": self.data_time / max(self.step_time, 1e-9)}

    def as_dict(self) -> dict:
        self.flush()
        return {"sums": self.sums, "steps": self.steps, "volumes": self.volumes,
                "data_time": self.data_time, "step_time": self.step_time, "lr": self.lr}

    @classmethod
    def from_dict(cls, d: dict) -> EpochStats:
        return cls(**d)


def _as_floats(items: list) -> list[float]:
    """``items`` (floats, ints, 0-d tensors) as Python floats, one transfer for the tensors."""
    out = list(items)
    tensors = [i for i, v in enumerate(items) if isinstance(v, Tensor)]
    if tensors:
        device = items[tensors[0]].device
        stacked = torch.stack([items[i].reshape(()).to(device, torch.float64) for i in tensors])
        for i, v in zip(tensors, stacked.tolist()):
            out[i] = v
    return [float(v) for v in out]


class NonFiniteWatch:
    """Remembers the first step whose loss was NaN or Inf, on the loss's device.

    :meth:`observe` is a few tiny device ops (no host synchronisation); :meth:`first` reads the
    result back, which the engine does every :func:`sync_interval` steps and before it writes
    a checkpoint, so a non-finite loss never reaches a checkpoint.
    """

    def __init__(self) -> None:
        self._step: Tensor | None = None  # -1 while every loss was finite
        self._value: Tensor | None = None

    def observe(self, loss: Tensor, step: int) -> None:
        loss = loss.detach().float().reshape(())
        if self._step is None:
            self._step = torch.full((), -1, dtype=torch.int64, device=loss.device)
            self._value = torch.zeros((), device=loss.device)
        new = ~torch.isfinite(loss) & (self._step < 0)
        self._step = torch.where(new, step, self._step)
        self._value = torch.where(new, loss, self._value)

    def first(self) -> tuple[int, float] | None:
        """``(step, loss)`` of the first non-finite loss, or None (synchronises)."""
        if self._step is None or int(self._step) < 0:
            return None
        return int(self._step), float(self._value)


def alignment_uniformity(z: Tensor) -> dict[str, Tensor]:
    """Wang & Isola (ICML 2020) on normalised embeddings ``z`` ``(n_views, B, D)``.

    alignment = E ||z1 - z2||^2 over positive pairs (lower is better);
    uniformity = log E exp(-2 ||z_a - z_b||^2) over distinct samples (lower is better).
    Returns 0-d tensors on ``z``'s device (no host synchronisation).
    """
    align = (z[0] - z[1]).pow(2).sum(-1).mean()
    if z.shape[1] < 2:
        return {"alignment": align}
    uniform = torch.pdist(z[0]).pow(2).mul(-2).exp().mean().log()
    return {"alignment": align, "uniformity": uniform}


def read_history(path: Path) -> list[dict]:
    """Epoch records, the last one per epoch (a resumed run may have written one twice)."""
    if not path.exists():
        return []
    records = {}
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            records[rec["epoch"]] = rec
    return [records[k] for k in sorted(records)]


class ProgressBar:
    """A rich progress bar with loss and volumes/s; does nothing when disabled."""

    def __init__(self, total: int, label: str, enabled: bool, completed: int = 0):
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} vol/s"),
            TimeRemainingColumn(), disable=not enabled, transient=False)
        self._task = self._progress.add_task(label, total=total, completed=completed,
                                             loss="-", speed="-")

    def __enter__(self) -> ProgressBar:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def update_plain(self) -> None:
        """Advance by one without statistics."""
        if self.enabled:
            self._progress.update(self._task, advance=1)

    def update(self, stats: EpochStats) -> None:
        if self.enabled:
            s = stats.summary()
            self._progress.update(self._task, advance=1, loss=f"{s.get('loss', 0):.4f}",
                                  speed=f"{s['volumes_per_s']:.1f}")
