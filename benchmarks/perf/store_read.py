"""Store reads: the ssltk volume store versus nibabel .nii.gz and a raw .npy memmap.

With ``--scans DIR`` (a folder of real NIfTI scans): every store encoding and codec on those
scans, preprocessed as ``ssltk ingest nifti --shape 96 96 96`` does, side by side with nibabel
reading float32 ``.nii.gz``/``.nii`` (see ``store_real.py``). Without it, on synthetic volumes:

For each volume shape: random-access read throughput (volumes/s, random order) of the ssltk
store (float16 + Blosc zstd, the default; float16 + Blosc lz4; float32 uncompressed) side by
side with nibabel loading the same volumes from .nii.gz and .nii (``get_fdata(float32)``,
``mmap=False`` so a .nii is read rather than memory-mapped) and
with copying one volume out of a raw .npy memmap; the size on disk of each format relative to
raw float32 .nii; and the throughput of three loaders over the default store: the engine's
``BatchReader`` (batches of 8 read into one reused buffer, what ssltk's training loop does) and
a plain ``torch.utils.data.DataLoader`` over a per-volume Dataset with the default collate
(batch 8, 0 and 2 workers), each as a fraction of a plain ``store[i]`` loop.

Volumes are brain-like: the MNI152 template (nilearn, offline) resampled to each shape, with a
per-volume gain, gamma, shift, smooth bias field and Rician noise, intensities in ~[0, 1]. One
Blosc thread and one torch thread (``BLOSC_NTHREADS=1``, ``torch.set_num_threads(1)``); the
2-worker DataLoader uses two processes. Reads are warm (files in the page cache, after an
untimed warm-up pass). Candidates run round-robin inside each pass, in the same random order,
so load spikes hit them alike; the figure is the median over passes.

    python benchmarks/perf/store_read.py                     # 64^3, 96^3, 121x145x121
    python benchmarks/perf/store_read.py --quick             # 64^3 only, 20 volumes, 3 passes
    python benchmarks/perf/store_read.py --sizes 96 121x145x121 --volumes 30
    python benchmarks/perf/store_read.py --scans DIR         # real scans at 96^3, 15 passes
"""

from __future__ import annotations

import os

os.environ.setdefault("BLOSC_NTHREADS", "1")  # before hdf5plugin loads the Blosc filter

import argparse  # noqa: E402
import datetime
import math
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py  # noqa: E402
import hdf5plugin  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy import ndimage  # noqa: E402
from torch.utils.data import DataLoader, Dataset, Sampler  # noqa: E402

from ssltk.store import StoreWriter, VolumeStore  # noqa: E402

from ssltk.data.loading import (  # noqa: E402  (the training loop's reader, the loader)
    BatchReader,
    VolumeDataset,
    make_loader,
)

STORES = (("auto", "zstd"), ("float16", "zstd"), ("float16", "lz4"), ("float32", "none"))
BATCH = 8


# -- volumes ---------------------------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int, int]:
    """``96`` -> (96, 96, 96); ``121x145x121`` -> (121, 145, 121)."""
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or min(parts) < 4:
        raise argparse.ArgumentTypeError(f"size {text!r}: give N or XxYxZ (each >= 4)")
    return tuple(parts)


def label(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}^3" if len(set(shape)) == 1 else "x".join(map(str, shape))


def template(shape: tuple[int, int, int]) -> np.ndarray:
    """The 1 mm MNI152 T1 template, low-passed and resampled (trilinear) to ``shape``, in [0, 1]."""
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1).get_fdata(dtype=np.float32)
    factor = np.maximum(np.asarray(t1.shape) / np.asarray(shape), 1.0)
    t1 = ndimage.gaussian_filter(t1, (factor - 1.0) / 2.0)
    t = torch.from_numpy(np.ascontiguousarray(t1))[None, None]
    out = F.interpolate(t, size=shape, mode="trilinear", align_corners=False)[0, 0].numpy()
    return np.clip(out / np.percentile(out, 99.9), 0.0, None)


def brain_volume(base: np.ndarray, rng: np.random.Generator, masked: bool = True) -> np.ndarray:
    """One scan (1, *shape) float32 in ~[0, 1]: shift, gamma, gain, bias field, Rician noise.

    ``masked``: zero outside the brain, as in a skull-stripped, registered scan (the template is
    skull-stripped); otherwise Rician noise fills the background too, as in an unmasked scan.
    """
    shift = rng.integers(-3, 4, 3)
    x = np.roll(base, tuple(shift), axis=(0, 1, 2))
    brain = x > 0.01
    x = x ** rng.uniform(0.8, 1.25) * rng.uniform(0.85, 1.05)
    coarse = torch.from_numpy(rng.normal(0.0, rng.uniform(0.04, 0.15), (1, 1, 3, 3, 3))
                              .astype(np.float32))
    bias = F.interpolate(coarse, size=base.shape, mode="trilinear", align_corners=True)[0, 0]
    x = x * np.exp(bias.numpy())
    sd = rng.uniform(0.01, 0.04)  # the synthetic cohort's range of noise levels
    noise = rng.standard_normal((2, *base.shape), dtype=np.float32) * sd
    x = np.sqrt((x + noise[0]) ** 2 + noise[1] ** 2)
    if masked:
        x = x * brain
    return np.clip(x, 0.0, 1.5).astype(np.float32)[None]


def write_formats(tmp: Path, shape: tuple[int, int, int], n: int, seed: int,
                  masked: bool = True) -> dict[str, object]:
    """Write ``n`` volumes in every format; returns paths and the first volume (for a check)."""
    base = template(shape)
    rng = np.random.default_rng(seed)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    nii_dir, gz_dir = tmp / "nii", tmp / "niigz"
    nii_dir.mkdir()
    gz_dir.mkdir()
    npy = np.lib.format.open_memmap(tmp / "volumes.npy", mode="w+", dtype=np.float32,
                                    shape=(n, 1, *shape))
    writers = {f"{d}+{c}": StoreWriter.create(tmp / f"store_{d}_{c}.h5", shape=(1, *shape),
                                              columns={}, dtype=d, compression=c)
               for d, c in STORES}
    first = None
    for i in range(n):
        vol = brain_volume(base, rng, masked)
        first = vol if first is None else first
        img = nib.Nifti1Image(vol[0], affine)
        nib.save(img, nii_dir / f"{i:04d}.nii")
        nib.save(img, gz_dir / f"{i:04d}.nii.gz")
        npy[i] = vol
        for w in writers.values():
            w.append(vol, {"subject_id": f"sub-{i:04d}"})
    npy.flush()
    del npy
    for w in writers.values():
        w.close()
    return {"nii": sorted(nii_dir.iterdir()), "niigz": sorted(gz_dir.iterdir()),
            "npy": tmp / "volumes.npy", "first": first,
            **{k: tmp / f"store_{k.replace('+', '_')}.h5" for k in writers}}


def disk_bytes(paths) -> int:
    paths = paths if isinstance(paths, list) else [paths]
    return sum(p.stat().st_size for p in paths)


# -- candidates ------------------------------------------------------------------------------
class StoreItems(Dataset):
    """What a user would write: one volume per item, ``torch.from_numpy(store[i])``."""

    def __init__(self, store: VolumeStore):
        self.store = store  # picklable; each worker opens its own h5py handle lazily

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.store[i])


class OrderSampler(Sampler):
    """Yields the order of the current pass (set before each pass; workers stay persistent)."""

    def __init__(self) -> None:
        self.order: list[int] = []

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def read_candidates(files: dict) -> dict[str, Callable[[np.ndarray], int]]:
    """``name -> fn(order)``: reads every row of ``order`` (random access), returns the count."""
    stores = {f"{d}+{c}": VolumeStore.open(files[f"{d}+{c}"]) for d, c in STORES}
    npy = np.load(files["npy"], mmap_mode="r")
    one = np.empty((1, *npy.shape[1:]), dtype=np.float32)
    sink = []

    def nibabel_reader(paths):
        # mmap=False: an uncompressed float32 .nii would otherwise come back as a memmap of
        # the file, nothing read (a .nii.gz is decompressed either way).
        def read(order):
            for i in order:
                sink.append(nib.load(paths[i], mmap=False).get_fdata(dtype=np.float32))
                sink.clear()
            return len(order)
        return read

    def npy_read(order):
        for i in order:
            sink.append(np.array(npy[i]))
            sink.clear()
        return len(order)

    def store_getitem(store):
        def read(order):
            for i in order:
                sink.append(store[i])
                sink.clear()
            return len(order)
        return read

    def store_read_into(store):
        def read(order):
            for i in order:
                store.read_into([i], one)
            return len(order)
        return read

    return {
        "nibabel .nii.gz": nibabel_reader(files["niigz"]),
        "nibabel .nii": nibabel_reader(files["nii"]),
        ".npy memmap, copy one volume": npy_read,
        "ssltk store auto (uint8, max error 1/128) + zstd (default)":
            store_getitem(stores["auto+zstd"]),
        "ssltk store float32, uncompressed": store_getitem(stores["float32+none"]),
        "ssltk store float16 + lz4": store_getitem(stores["float16+lz4"]),
        "ssltk store float16 + zstd (default before)": store_getitem(stores["float16+zstd"]),
        "ssltk store auto + zstd, read_into reused buffer":
            store_read_into(stores["auto+zstd"]),
    }


def loader_candidates(path: Path) -> tuple[dict[str, Callable[[np.ndarray], int]], list]:
    """The batch paths over the default store: BatchReader and DataLoader with 0 / 2 workers."""
    reader = BatchReader(VolumeStore.open(path))
    loaders = []

    def batch_reader(order):
        n = len(order) // BATCH * BATCH
        for s in range(0, n, BATCH):
            reader.read(order[s:s + BATCH])
        return n

    def data_loader(workers):
        sampler = OrderSampler()
        loader = DataLoader(StoreItems(VolumeStore.open(path)), batch_size=BATCH,
                            sampler=sampler, num_workers=workers,
                            persistent_workers=workers > 0)
        loaders.append(loader)

        def read(order):
            sampler.order = [int(i) for i in order]
            count = 0
            for x in loader:
                count += x.shape[0]
            return count
        return read

    def ssltk_loader(workers, copy=True):
        dataset = VolumeDataset(VolumeStore.open(path), cache=False)

        def read(order):  # whole epochs of make_loader (its own seeded order), >= len(order)
            count = 0
            for epoch in range(max(1, len(order) // len(dataset))):
                for x, _ in make_loader(dataset, BATCH, seed=0, epoch=epoch, workers=workers,
                                        drop_last=True, copy=copy):
                    count += x.shape[0]
            return count
        return read

    return {
        "engine BatchReader (batch 8, reused buffer)": batch_reader,
        "ssltk make_loader (whole batches), copy=False": ssltk_loader(0, copy=False),
        "ssltk make_loader (whole batches), 0 workers": ssltk_loader(0),
        "ssltk make_loader (whole batches), 2 workers": ssltk_loader(2),
        "DataLoader, default collate, 0 workers": data_loader(0),
        "DataLoader, default collate, 2 workers": data_loader(2),
    }, loaders


def time_passes(fns: dict[str, Callable], n: int, passes: int, reads: int,
                seed: int) -> dict[str, float]:
    """Median volumes/s of each candidate over ``passes`` passes after one untimed warm-up.

    A pass reads ``reads`` rows (whole random permutations of the ``n`` rows, concatenated); all
    candidates read the same order, round-robin within the pass.
    """
    rng = np.random.default_rng(seed)
    epochs = max(1, math.ceil(reads / n))
    rates: dict[str, list[float]] = {k: [] for k in fns}
    for p in range(passes + 1):
        order = np.concatenate([rng.permutation(n) for _ in range(epochs)])
        for name, fn in fns.items():
            t0 = time.perf_counter()
            count = fn(order)
            dt = time.perf_counter() - t0
            if p > 0:
                rates[name].append(count / dt)
    return {k: statistics.median(v) for k, v in rates.items()}


def size_ratios(root: Path, shape, seed: int, masked: bool, k: int) -> dict[str, float]:
    """Size vs float32 .nii of .nii.gz and the float16 stores, on ``k`` volumes only."""
    tmp = root / f"sizes_{label(shape)}"
    tmp.mkdir()
    files = write_formats(tmp, shape, k, seed + 1, masked)
    nii = disk_bytes(files["nii"])
    out = {name: nii / disk_bytes(files[key]) for name, key in
           (("nibabel .nii.gz", "niigz"), ("ssltk store float16 + lz4", "float16+lz4"),
            ("ssltk store float16 + zstd (default before)", "float16+zstd"),
            ("ssltk store auto (default)", "auto+zstd"))}
    shutil.rmtree(tmp)
    return out


def check(files: dict) -> float:
    """Max abs difference of the float16 store's first volume from the float32 original; the
    default (auto) store's is checked against its bound (1/128 of the volume's range)."""
    with VolumeStore.open(files["float16+zstd"]) as s:
        err = float(np.abs(s[0] - files["first"]).max())
    with VolumeStore.open(files["auto+zstd"]) as s:
        span = float(files["first"].max() - files["first"].min())
        assert float(np.abs(s[0] - files["first"]).max()) <= span / 128 + 1e-6
    for k in ("float32+none",):
        with VolumeStore.open(files[k]) as s:
            assert np.array_equal(s[0], files["first"]), k
    assert np.array_equal(nib.load(files["niigz"][0]).get_fdata(dtype=np.float32),
                          files["first"][0])
    return err


def bench_size(shape, n, args, root: Path) -> dict:
    tmp = root / label(shape)
    tmp.mkdir()
    t0 = time.perf_counter()
    files = write_formats(tmp, shape, n, args.seed, args.background == "masked")
    t_write = time.perf_counter() - t0
    err = check(files)
    reads = read_candidates(files)
    loads, loaders = loader_candidates(files["auto+zstd"])
    raw = "ssltk store auto (uint8, max error 1/128) + zstd (default)"
    rates = time_passes({**reads, **loads}, n, args.passes, args.reads, args.seed)
    del loaders  # shuts the persistent workers down
    nii = disk_bytes(files["nii"]) / n
    sizes = {"nibabel .nii.gz": disk_bytes(files["niigz"]) / n, "nibabel .nii": nii,
             ".npy memmap, copy one volume": disk_bytes(files["npy"]) / n,
             "ssltk store float32, uncompressed": disk_bytes(files["float32+none"]) / n,
             "ssltk store float16 + lz4": disk_bytes(files["float16+lz4"]) / n,
             "ssltk store float16 + zstd (default before)": disk_bytes(files["float16+zstd"]) / n,
             "ssltk store auto (uint8, max error 1/128) + zstd (default)":
                 disk_bytes(files["auto+zstd"]) / n}
    shutil.rmtree(tmp)
    other = size_ratios(root, shape, args.seed, args.background != "masked", args.size_volumes)
    return {"shape": shape, "other": other, "n": n, "rates": rates, "sizes": sizes, "nii": nii,
            "raw": raw, "reads": list(reads), "loads": list(loads), "err": err, "write_s": t_write,
            "time_s": time.perf_counter() - t0}


def print_size(r: dict) -> None:
    rates, gz = r["rates"], r["rates"]["nibabel .nii.gz"]
    mb = 4 * math.prod(r["shape"]) / 1e6
    print(f"\n### {label(r['shape'])} ({mb:.1f} MB as float32, {r['n']} volumes; float16 max "
          f"abs error {r['err']:.1e}; auto: at most 1/128 of each volume's range)\n")
    print("| format | read vol/s | vs nibabel .nii.gz | MB/vol on disk | size vs float32 .nii |")
    print("|---|---|---|---|---|")
    for name in r["reads"]:
        size = r["sizes"].get(name)
        cells = (f"{size / 1e6:.2f} | {r['nii'] / size:.1f}x smaller" if size else "same file |")
        print(f"| {name} | {rates[name]:.0f} | {rates[name] / gz:.1f}x faster | {cells} |")
    raw = rates[r["raw"]]
    print(f"\n| batch path (default store) | vol/s | vs plain `store[i]` loop "
          f"({raw:.0f} vol/s) |")
    print("|---|---|---|")
    for name in r["loads"]:
        print(f"| {name} | {rates[name]:.0f} | {100 * rates[name] / raw:.0f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64^3 only, 20 volumes, 3 passes")
    parser.add_argument("--sizes", nargs="+", type=parse_size,
                        default=[(64,) * 3, (96,) * 3, (121, 145, 121)],
                        help="cube sides or XxYxZ (default: 64 96 121x145x121)")
    parser.add_argument("--volumes", type=int, default=50, help="volumes per size")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--reads", type=int, default=100,
                        help="rows read per candidate per pass (whole permutations)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--background", choices=["masked", "noise"], default="masked",
                        help="masked: zero outside the brain (skull-stripped, registered scans); "
                             "noise: Rician noise in the background too (unmasked scans)")
    parser.add_argument("--size-volumes", type=int, default=5,
                        help="volumes of the size check with the other --background")
    parser.add_argument("--tmp", type=Path, default=None, help="parent of the temporary folder")
    parser.add_argument("--scans", type=Path, default=None,
                        help="folder of real NIfTI scans: compare store encodings on them")
    parser.add_argument("--scan-shape", type=int, default=96,
                        help="--scans: pad/crop the preprocessed scans to this cube")
    parser.add_argument("--scan-spacing", type=float, default=None,
                        help="--scans: resample to this voxel size in mm (as ingest --spacing)")
    args = parser.parse_args()
    if args.scans is not None:
        return main_real(args)
    if args.quick:
        args.sizes, args.volumes, args.passes, args.reads = [(64,) * 3], 20, 3, 40
        args.size_volumes = 3
    torch.set_num_threads(1)
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="ssltk_store_read_", dir=args.tmp) as tmp:
        for shape in args.sizes:
            results.append(bench_size(shape, args.volumes, args, Path(tmp)))
            print(f"[{label(shape)}: {results[-1]['time_s']:.0f} s, writing "
                  f"{results[-1]['write_s']:.0f} s]", flush=True)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {load0:.2f} at start / {os.getloadavg()[0]:.2f} at end, "
          f"background {args.background}, "
          f"{datetime.date.today()}; torch {torch.__version__} ({torch.get_num_threads()} thread), "
          f"BLOSC_NTHREADS={os.environ['BLOSC_NTHREADS']}, h5py {h5py.__version__} "
          f"(HDF5 {h5py.version.hdf5_version}), hdf5plugin {hdf5plugin.version}, nibabel "
          f"{nib.__version__}, numpy {np.__version__}; warm page cache; median of {args.passes} "
          f"passes of >= {args.reads} random reads; total {time.perf_counter() - t0:.0f} s")
    for r in results:
        print_size(r)
    other = "noise" if args.background == "masked" else "masked"
    names = list(results[0]["other"])
    print(f"\nSize vs float32 .nii with the other background ({other}; {args.size_volumes} "
          f"volumes per size):\n")
    print("| size | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for r in results:
        print(f"| {label(r['shape'])} | " + " | ".join(f"{r['other'][k]:.1f}x smaller"
                                                     for k in names) + " |")
    print("\n| size | store (default) vs nibabel .nii.gz | store vs float32 .nii size | "
          "BatchReader vs `store[i]` | make_loader copy=False / 0 / 2 workers vs `store[i]` | "
          "default-collate DataLoader 0 / 2 workers vs `store[i]` |")
    print("|---|---|---|---|---|---|")
    for r in results:
        rates, raw = r["rates"], r["rates"][r["raw"]]
        dl = [rates[f"DataLoader, default collate, {w} workers"] / raw for w in (0, 2)]
        ml = [rates["ssltk make_loader (whole batches), copy=False"] / raw] + [
            rates[f"ssltk make_loader (whole batches), {w} workers"] / raw for w in (0, 2)]
        print(f"| {label(r['shape'])} | {raw / rates['nibabel .nii.gz']:.1f}x faster | "
              f"{r['nii'] / r['sizes'][r['raw']]:.1f}x smaller | "
              f"{100 * rates['engine BatchReader (batch 8, reused buffer)'] / raw:.0f}% | "
              f"{100 * ml[0]:.0f}% / {100 * ml[1]:.0f}% / {100 * ml[2]:.0f}% | "
              f"{100 * dl[0]:.0f}% / {100 * dl[1]:.0f}% |")


def main_real(args: argparse.Namespace) -> None:
    from store_real import bench_real, print_real  # the sibling script module

    passes = 3 if args.quick else max(args.passes, 15)
    torch.set_num_threads(1)
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ssltk_store_real_", dir=args.tmp) as tmp:
        r = bench_real(args.scans, args.scan_shape, args.scan_spacing, passes, 30, args.seed,
                       Path(tmp))
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{load0:.2f} at start / {os.getloadavg()[0]:.2f} at end, {datetime.date.today()}; "
          f"torch {torch.__version__} (1 thread), BLOSC_NTHREADS={os.environ['BLOSC_NTHREADS']}, "
          f"h5py {h5py.__version__} (HDF5 {h5py.version.hdf5_version}), hdf5plugin "
          f"{hdf5plugin.version}, nibabel {nib.__version__}, numpy {np.__version__}; warm page "
          f"cache; median of {passes} passes of 30 random reads (wall clock and CPU time); total "
          f"{time.perf_counter() - t0:.0f} s")
    print_real(r, f"python benchmarks/perf/store_read.py --scans DIR --scan-shape "
                  f"{args.scan_shape}" + (f" --scan-spacing {args.scan_spacing}"
                                          if args.scan_spacing else "")
               + (" --quick" if args.quick else ""))


if __name__ == "__main__":
    main()
