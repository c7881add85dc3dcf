"""``ssltk synth``: generate a synthetic brain-MRI cohort (MNI152-based) as a volume store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ssltk.cli._common import console, progress_bar
from ssltk.cli.ingest import Compression, CompressionOpt, DType, DTypeOpt


def command(
    out: Annotated[Path, typer.Option("--out", "-o", dir_okay=False,
                                      help="Store to create (.h5).")],
    subjects: Annotated[int, typer.Option("--subjects", min=1, help="Number of subjects.")],
    shape: Annotated[int, typer.Option(
        "--shape", metavar="D H W | H W",
        help="Volume grid: three sizes (3D) or two (2D: one axial slice per scan).")],
    more_sizes: Annotated[list[int] | None, typer.Argument(
        hidden=True, metavar="", help="The sizes after the first one of --shape.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, bit-identical store.")] = 0,
    sessions_fraction: Annotated[float, typer.Option(
        "--sessions-fraction", min=0.0, max=1.0,
        help="Fraction of subjects with 2-3 longitudinal sessions.")] = 0.2,
    sites: Annotated[int, typer.Option("--sites", min=1, max=26,
                                       help="Acquisition sites (contrast, bias, noise).")] = 3,
    dtype: DTypeOpt = DType.float16,
    compression: CompressionOpt = Compression.zstd,
    overwrite: Annotated[bool, typer.Option("--overwrite",
                                            help="Replace OUT when it exists.")] = False,
) -> None:
    """Generate a synthetic cohort (CN/MCI/AD, ageing, sites) as an HDF5 volume store."""
    from ssltk.errors import ConfigError
    from ssltk.store.synth import make_cohort

    # click options have a fixed arity: the sizes after the first arrive as extra arguments
    sizes = (shape, *(more_sizes or []))
    if len(sizes) not in (2, 3):
        raise ConfigError(f"--shape: {' '.join(map(str, sizes))} must be 3 sizes (D H W) or "
                          f"2 (H W), e.g. --shape 32 32 32")
    with progress_bar("synth") as progress:
        path = make_cohort(out, subjects, sizes, seed,
                           sessions_fraction=sessions_fraction, sites=sites, dtype=dtype.value,
                           compression=compression.value, overwrite=overwrite,
                           progress=progress)
    from ssltk.store import VolumeStore

    rows = len(VolumeStore.open(path))
    console().print(f"[green]ok[/] {path}: {rows} scans of {subjects} subjects, shape "
                      f"{' x '.join(map(str, sizes))}, seed {seed}", highlight=False,
                      soft_wrap=True)
