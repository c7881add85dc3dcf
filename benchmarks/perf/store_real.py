"""Store encodings on real scans, side by side (``store_read.py --scans DIR``).

Each NIfTI file in DIR is preprocessed exactly as ``ssltk ingest nifti --shape S S S`` does
(``ssltk.store.preprocess_nifti``: RAS, percentile normalisation, centre crop / zero pad), then
written as float32 ``.nii.gz`` (nibabel's default gzip level) and ``.nii`` — what a user would
otherwise read — and as ssltk stores with each encoding and codec. Reported per format: read
rate (random order, whole volumes into float32, median over passes, round-robin so load spikes
hit every format alike), size per volume against float32 ``.nii`` and against the source files,
and the largest absolute error against the preprocessed float32 volume (checked against each
encoding's stated bound).

The store variants that the writer has no option for (zstd level, no checksums, two chunks per
volume, bit shuffle) are copies of the default store with ``/volumes`` re-created with those
HDF5 settings; they are read through the same ``VolumeStore`` path.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import hdf5plugin
import nibabel as nib
import numpy as np

from ssltk.store import NiftiOptions, StoreWriter, VolumeStore, preprocess_nifti
from ssltk.store.encoding import Encoding

DEFAULT = "auto (default): uint8, max error 1/128 of range, zstd"
# name -> (StoreWriter dtype, max_error, compression, mantissa bits to keep or None)
STORES = {
    "float32, uncompressed": ("float32", None, "none", None),
    "float16 + zstd (default before)": ("float16", None, "zstd", None),
    "float16, mantissa rounded to 7 bits, zstd": ("float16", None, "zstd", 7),
    "uint16 (--dtype uint16), zstd": ("uint16", None, "zstd", None),
    "uint8 (--dtype uint8), zstd": ("uint8", None, "zstd", None),
    "uint8 (--dtype uint8), lz4": ("uint8", None, "lz4", None),
    DEFAULT: ("auto", None, "zstd", None),
    "auto, max error 1/128, lz4": ("auto", None, "lz4", None),
    "auto, max error 1/128, gzip": ("auto", None, "gzip", None),
}
# variants of the default store: name -> create_dataset keyword arguments for /volumes
VARIANTS = {
    "auto, zstd level 1": lambda s: {**hdf5plugin.Blosc("zstd", 1, 1), "chunks": (1, *s)},
    "auto, zstd level 9": lambda s: {**hdf5plugin.Blosc("zstd", 9, 1), "chunks": (1, *s)},
    "auto, zstd, bit shuffle": lambda s: {**hdf5plugin.Blosc("zstd", 5, 2), "chunks": (1, *s)},
    "auto, zstd, no checksums": lambda s: {**hdf5plugin.Blosc("zstd", 5, 1),
                                           "chunks": (1, *s), "fletcher32": False},
    "auto, zstd, 2 chunks per volume": lambda s: {**hdf5plugin.Blosc("zstd", 5, 1),
                                                  "chunks": (1, s[0], math.ceil(s[1] / 2),
                                                             *s[2:])},
}


def round_mantissa(x: np.ndarray, bits: int) -> np.ndarray:
    """float16 with its 10-bit mantissa rounded (half up) to ``bits`` bits."""
    h = x.astype(np.float16).view(np.uint16)
    drop = 10 - bits
    h = ((h.astype(np.uint32) + (1 << (drop - 1))) >> drop << drop).astype(np.uint16)
    return h.view(np.float16).astype(np.float32)


def prepare(scans: Path, side: int, spacing: float | None, tmp: Path) -> dict:
    """Preprocess every scan and write every format; returns paths, sizes and volumes."""
    files = sorted(p for p in scans.iterdir() if p.name.endswith((".nii", ".nii.gz")))
    if not files:
        raise SystemExit(f"no .nii/.nii.gz files in {scans}")
    options = NiftiOptions(shape=(side,) * 3, spacing=spacing)
    vols = [preprocess_nifti(p, options)[0] for p in files]
    shape = vols[0].shape
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    out = {"source": files, "vols": vols, "shape": shape, "nii": [], "niigz": []}
    for i, v in enumerate(vols):
        for kind, ext in (("nii", ".nii"), ("niigz", ".nii.gz")):
            path = tmp / f"{i:03d}{ext}"
            nib.save(nib.Nifti1Image(v[0], affine), path)
            out[kind].append(path)
    for name, (dtype, max_error, codec, bits) in STORES.items():
        path = tmp / f"store_{len(out)}.h5"
        with StoreWriter.create(path, shape, {}, dtype=dtype, max_error=max_error,
                                compression=codec) as w:
            for i, v in enumerate(vols):
                w.append(round_mantissa(v, bits) if bits else v, {"subject_id": f"s{i:03d}"})
        out[name] = path
    for name, kwargs in VARIANTS.items():
        out[name] = tmp / f"variant_{len(out)}.h5"
        copy_with_volumes(out[DEFAULT], out[name], kwargs(shape))
    return out


def copy_with_volumes(src: Path, dst: Path, create: dict) -> None:
    """``src`` with ``/volumes`` re-created with other HDF5 creation settings, same codes."""
    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        for key, value in f.attrs.items():
            g.attrs[key] = value
        for name in f:
            if name != "volumes":
                f.copy(name, g)
        ds = f["volumes"]
        new = g.create_dataset("volumes", shape=ds.shape, maxshape=ds.maxshape, dtype=ds.dtype,
                               **{"fletcher32": True, **create})
        for i in range(ds.shape[0]):
            new[i] = ds[i]


def readers(files: dict, names: list[str]) -> dict[str, Callable[[np.ndarray], int]]:
    """``name -> fn(order)`` reading whole volumes into float32."""
    def nibabel_reader(paths):
        def read(order):
            for i in order:
                nib.load(paths[i], mmap=False).get_fdata(dtype=np.float32)
            return len(order)
        return read

    def store_reader(store: VolumeStore):
        buf = np.empty((1, *store.shape), np.float32)

        def read(order):
            for i in order:
                store.read_into([i], buf)
            return len(order)
        return read

    fns = {"nibabel float32 .nii.gz": nibabel_reader(files["niigz"]),
           "nibabel float32 .nii": nibabel_reader(files["nii"])}
    fns.update({n: store_reader(VolumeStore.open(files[n])) for n in names})
    return fns


def time_passes(fns: dict, n: int, passes: int, reads: int,
                seed: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median vol/s of each reader over ``passes`` (after a warm-up), round-robin: by wall
    clock, and by this process's CPU time (every reader here runs on one thread, so on a
    machine shared with other jobs the CPU time is the steadier measure of its cost)."""
    rng = np.random.default_rng(seed)
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for p in range(passes + 1):
        order = np.concatenate([rng.permutation(n) for _ in range(max(1, reads // n))])
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            count = fn(order)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if p:
                wall[name].append(count / dt)
                cpu[name].append(count / max(dc, 1e-9))
    return ({k: statistics.median(v) for k, v in wall.items()},
            {k: statistics.median(v) for k, v in cpu.items()})


def errors(files: dict, names: list[str]) -> dict[str, float]:
    """Largest |stored - preprocessed| per store, asserted within each encoding's bound."""
    out = {}
    for name in names:
        with VolumeStore.open(files[name]) as store:
            worst = 0.0
            for i, v in enumerate(files["vols"]):
                err = float(np.abs(store[i] - v).max())
                span = float(v.max() - v.min())
                bound = store.encoding.bound
                if store.encoding.is_integer:
                    assert err <= bound * span + 1e-6, (name, i, err, bound * span)
                worst = max(worst, err)
            out[name] = worst
    return out


def bench_real(scans: Path, side: int, spacing: float | None, passes: int, reads: int, seed: int,
               tmp: Path) -> dict:
    files = prepare(scans, side, spacing, tmp)
    names = list(STORES) + list(VARIANTS)
    n = len(files["vols"])
    rates, cpu = time_passes(readers(files, names), n, passes, reads, seed)
    per = {k: sum(p.stat().st_size for p in files[k]) / n for k in ("nii", "niigz", "source")}
    sizes = {name: files[name].stat().st_size / n for name in names}
    return {"n": n, "shape": files["shape"], "rates": rates, "cpu": cpu, "per": per,
            "sizes": sizes,
            "errors": errors(files, names), "names": names, "spacing": spacing}


def print_real(r: dict, command: str) -> None:
    rates, cpu = r["rates"], r["cpu"]
    gz, gz_cpu = rates["nibabel float32 .nii.gz"], cpu["nibabel float32 .nii.gz"]
    nii, src = r["per"]["nii"], r["per"]["source"]
    side = r["shape"][-1]
    resampled = f", resampled to {r['spacing']} mm" if r["spacing"] else ""
    print(f"\n### Real scans: {r['n']} volumes, preprocessed to {side}^3 as ingest does"
          f"{resampled}\n")
    print(f"Source files: {src / 1e3:.0f} KB/volume on average; float32 .nii "
          f"{nii / 1e3:.0f} KB; float32 .nii.gz {r['per']['niigz'] / 1e3:.0f} KB. `{command}`\n")
    print("| format | read vol/s (wall) | CPU ms/vol | vs nibabel .nii.gz (wall / CPU) "
          "| KB/vol | smaller than float32 .nii | vs source .nii.gz | max abs error |")
    print("|---|---|---|---|---|---|---|---|")
    rows = [(name, r["per"]["niigz" if name.endswith("gz") else "nii"], 0.0, "")
            for name in ("nibabel float32 .nii.gz", "nibabel float32 .nii")]
    rows += [(name, r["sizes"][name], r["errors"][name], "ssltk store ") for name in r["names"]]
    for name, size, err, prefix in rows:
        bold = "**" if name == DEFAULT else ""
        print(f"| {bold}{prefix}{name}{bold} | {rates[name]:.0f} | {1e3 / cpu[name]:.1f} | "
              f"{rates[name] / gz:.1f}x / {cpu[name] / gz_cpu:.1f}x | {size / 1e3:.0f} | "
              f"{nii / size:.1f}x | {src / size:.2f}x | {err:.1e} |")
    d = r["sizes"][DEFAULT]
    print(f"\nDefault store vs targets: reads {rates[DEFAULT] / gz:.1f}x (wall) / "
          f"{cpu[DEFAULT] / gz_cpu:.1f}x (CPU time) nibabel .nii.gz (>= 5x), {nii / d:.1f}x "
          f"smaller than float32 .nii (>= 8x), {src / d:.2f}x smaller than the source .nii.gz "
          f"(>= 1x: never larger); max abs error {r['errors'][DEFAULT]:.4f} (bound: 1/128 = "
          f"{Encoding.resolve('auto').bound:.4f} of each volume's range, [0, 1] here)")
