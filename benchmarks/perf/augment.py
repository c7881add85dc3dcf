"""Batched ssltk augmentations versus the same ops as MONAI per-sample transforms.

Times ms per volume (median of repeats, after one warm-up) for each op of the default pipeline
with p = 1, and for the whole default pipeline (its own p values) fused and unfused, on a batch
of random volumes. MONAI runs the equivalent array transforms sample by sample (the way a
Dataset applies them), with metadata tracking off (its fastest mode).

    python benchmarks/perf/augment.py            # batch 16 at 96^3, 5 repeats, 2 threads
    python benchmarks/perf/augment.py --quick    # batch 4 at 64^3, 3 repeats
    python benchmarks/perf/augment.py --device cuda
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import statistics
import time
from collections.abc import Callable

import torch

from ssltk.augment import DEFAULT_PIPELINE, Pipeline
from ssltk.registry import get_registry


def monai_ops(spec: dict, size: int | tuple[int, ...], p: float) -> list:
    """The MONAI array transforms equivalent to one ssltk spec (same ranges and probability).

    ``size``: the volumes' side (cubes) or their spatial shape.
    """
    from monai import transforms as T

    shape = (size,) * 3 if isinstance(size, int) else tuple(size)
    name = spec["name"]
    if name == "random_resized_crop":
        lo = spec["scale"][0] ** (1 / 3)  # per-axis scale giving the same smallest volume
        crop = T.RandScaleCrop(roi_scale=lo, max_roi_scale=1.0, random_size=True)
        return [crop, T.Resize(shape, mode="trilinear")]
    if name == "flip":
        return [T.RandFlip(prob=p * spec["axis_p"], spatial_axis=a) for a in spec["axes"]]
    if name == "affine":
        rad = math.radians(spec["degrees"])
        return [T.RandAffine(prob=p, rotate_range=(rad,) * 3,
                             scale_range=(spec["scale"][1] - 1,) * 3,
                             translate_range=tuple(spec["translate"] * n for n in shape),
                             padding_mode="zeros", mode="bilinear",
                             spatial_size=shape, cache_grid=True)]
    if name == "gaussian_blur":
        s = tuple(spec["sigma"])
        return [T.RandGaussianSmooth(sigma_x=s, sigma_y=s, sigma_z=s, prob=p)]
    if name == "gaussian_noise":
        return [T.RandGaussianNoise(prob=p, mean=0.0, std=spec["std"][1], sample_std=True)]
    if name == "cutout":
        lo, hi = (tuple(max(1, round(f * n)) for n in shape) for f in spec["size"])
        return [T.RandCoarseDropout(holes=1, spatial_size=lo, max_spatial_size=hi,
                                    fill_value=spec["fill"], prob=p)]
    raise KeyError(name)


def monai_runner(specs: list[dict], size: int | tuple[int, ...],
                 per_op_p: float | None) -> Callable:
    from monai import transforms as T
    from monai.data import set_track_meta

    set_track_meta(False)
    ops = [op for s in specs for op in monai_ops(s, size, s["p"] if per_op_p is None else per_op_p)]
    chain = T.Compose(ops)
    chain.set_random_state(seed=0)
    return lambda x: torch.stack([torch.as_tensor(chain(xi)) for xi in x])


def ours_runner(specs: list[dict], per_op_p: float | None, fuse: bool = True) -> Callable:
    specs = copy.deepcopy(specs)
    if per_op_p is not None:
        for s in specs:
            s["p"] = per_op_p
    pipeline = Pipeline.from_specs(get_registry(), specs, fuse=fuse)
    gen = torch.Generator().manual_seed(0)
    return lambda x: pipeline(x, gen)


def time_ms(fns: list[Callable], x: torch.Tensor, repeats: int) -> list[float]:
    """Median ms per volume of each ``fn(x)`` over ``repeats`` runs, after one warm-up.

    The candidates run round-robin within each repeat, so a load spike on a shared machine hits
    them alike instead of biasing one of them.
    """
    def run(fn) -> float:
        t0 = time.perf_counter()
        fn(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for fn in fns:
        run(fn)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            ts.append(run(fn))
    return [1000 * statistics.median(ts) / x.shape[0] for ts in times]


def flip_all_axes(spec: dict) -> dict:
    return {**spec, "axes": [0, 1, 2], "axis_p": 0.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 4 at 64^3, 3 repeats")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.size, args.repeats = 4, 64, 3
    torch.set_num_threads(args.threads)
    x = torch.rand(args.batch, 1, *(args.size,) * 3, device=args.device)

    rows = []
    for spec in DEFAULT_PIPELINE:
        spec = flip_all_axes(spec) if spec["name"] == "flip" else spec
        label = spec["name"] + (" (3 axes)" if spec["name"] == "flip" else "")
        ms_m, ms_o = time_ms([monai_runner([spec], args.size, 1.0), ours_runner([spec], 1.0)],
                             x, args.repeats)
        rows.append((f"{label}, p=1", ms_m, ms_o))
    ms_m, ms_u, ms_o = time_ms([monai_runner(DEFAULT_PIPELINE, args.size, None),
                                ours_runner(DEFAULT_PIPELINE, None, fuse=False),
                                ours_runner(DEFAULT_PIPELINE, None)], x, args.repeats)
    rows.append(("default pipeline, unfused", ms_m, ms_u))
    rows.append(("**default pipeline (fused)**", ms_m, ms_o))

    print(f"batch {args.batch} x 1 x {args.size}^3 float32, device {args.device}, "
          f"{args.threads} threads, median of {args.repeats}; torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")
    print()
    print("| op | MONAI per-sample (ms/vol) | ssltk batched (ms/vol) | speed-up |")
    print("|---|---|---|---|")
    for label, m, o in rows:
        print(f"| {label} | {m:.1f} | {o:.1f} | {m / o:.2f}x |")


if __name__ == "__main__":
    main()
