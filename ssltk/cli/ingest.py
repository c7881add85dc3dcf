"""``ssltk ingest nifti|images``: build a volume store from NIfTI/BIDS or 2D image folders."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ssltk.cli._common import console, progress_bar

app = typer.Typer(help="Build an HDF5 volume store from NIfTI/BIDS or 2D image folders.",
                  no_args_is_help=True)


class Normalize(str, Enum):
    none = "none"
    zscore = "zscore"
    percentile = "percentile"


class DType(str, Enum):
    auto = "auto"
    uint8 = "uint8"
    uint16 = "uint16"
    float16 = "float16"
    float32 = "float32"


class Compression(str, Enum):
    zstd = "zstd"
    lz4 = "lz4"
    gzip = "gzip"
    none = "none"


class OnError(str, Enum):
    abort = "abort"
    skip = "skip"


Out = Annotated[Path, typer.Option("--out", "-o", dir_okay=False,
                                   help="Store to create, or to resume when it exists.")]
DTypeOpt = Annotated[DType, typer.Option(
    "--dtype", help="How volumes are stored: auto (uint8 codes, per-volume scale/offset, max "
                    "error --max-error of each volume's range), uint8, uint16, float16, float32 "
                    "(exact). See docs/store.md.")]
MaxErrorOpt = Annotated[float | None, typer.Option(
    "--max-error", metavar="FRACTION", min=0.0, max=0.4999,
    help="auto/uint8/uint16: largest error allowed, as a fraction of each volume's intensity "
         "range (auto: 1/128 = 0.0078125 for nifti, 1/508 for images; 0 = finest grid, "
         "exact for integer data).")]
CompressionOpt = Annotated[Compression, typer.Option("--compression", help="Volume codec.")]
OnErrorOpt = Annotated[OnError, typer.Option(
    "--on-error", help="abort at the first bad file, or skip it (listed in OUT.skipped.tsv).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace OUT instead of resuming.")]


def _positive(sizes: tuple[int, ...] | None, option: str) -> None:
    if sizes is not None and min(sizes) < 1:
        raise typer.BadParameter(f"{' '.join(map(str, sizes))}: every size must be >= 1",
                                 param_hint=option)


def _summary(report) -> None:
    out = console()
    for line in report.warnings:
        out.print(f"[yellow]warning[/] {line}", highlight=False, soft_wrap=True)
    out.print(f"[green]ok[/] {report.out}: {report.written} row(s) written"
              + (f", {report.already} already there" if report.already else "")
              + (f", {len(report.skipped)} skipped (see {report.skipped_report})"
                 if report.skipped else ""), highlight=False, soft_wrap=True)


@app.command("nifti")
def nifti(
    src: Annotated[Path, typer.Argument(exists=True, file_okay=False,
                                        help="BIDS tree or folder of .nii/.nii.gz files.")],
    out: Out,
    participants: Annotated[Path | None, typer.Option(
        "--participants", exists=True, dir_okay=False,
        help="participants .tsv/.csv (default: SRC/participants.tsv when present).")] = None,
    shape: Annotated[tuple[int, int, int] | None, typer.Option(
        "--shape", metavar="D H W", help="Pad/crop every volume to this grid.")] = None,
    spacing: Annotated[float | None, typer.Option(
        "--spacing", metavar="MM", min=0.01, help="Resample to isotropic voxels of MM mm.")] = None,
    normalize: Annotated[Normalize, typer.Option(
        "--normalize", help="Intensity normalisation: percentile (to [0, 1]; a binary mask is "
                            "stored as 0/1), zscore (inside the foreground; refuses binary "
                            "masks) or none (the only one that keeps a constant file). See "
                            "docs/store.md.")] = Normalize.percentile,
    dtype: DTypeOpt = DType.auto,
    max_error: MaxErrorOpt = None,
    compression: CompressionOpt = Compression.zstd,
    workers: Annotated[int, typer.Option("--workers", min=1,
                                         help="Processes loading/preprocessing files.")] = 1,
    on_error: OnErrorOpt = OnError.abort,
    pattern: Annotated[str | None, typer.Option(
        "--pattern", metavar="GLOB", help="Files to take, relative to SRC.")] = None,
    categorical: Annotated[list[str] | None, typer.Option(
        "--categorical", metavar="COLUMN",
        help="participants column to keep categorical even if numeric (repeatable).")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Ingest NIfTI files (BIDS or flat folder) into a store; re-running resumes."""
    from ssltk.store.ingest_nifti import NiftiOptions, ingest_nifti

    _positive(shape, "--shape")
    options = NiftiOptions(shape=tuple(shape) if shape else None, spacing=spacing,
                           normalize=normalize.value)
    with progress_bar("ingest nifti") as progress:
        report = ingest_nifti(src, out, participants, options, dtype=dtype.value,
                              compression=compression.value, workers=workers,
                              on_error=on_error.value, pattern=pattern, overwrite=overwrite,
                              categorical=categorical or (), progress=progress,
                              max_error=max_error)
    _summary(report)


@app.command("images")
def images(
    src: Annotated[Path, typer.Argument(exists=True, file_okay=False,
                                        help="SRC/<class>/*.png (or SRC/<split>/<class>/*.jpg).")],
    out: Out,
    size: Annotated[tuple[int, int], typer.Option("--size", metavar="H W",
                                                  help="Resize every image to H x W.")],
    dtype: DTypeOpt = DType.auto,
    max_error: MaxErrorOpt = None,
    compression: CompressionOpt = Compression.zstd,
    on_error: OnErrorOpt = OnError.abort,
    subject_regex: Annotated[str | None, typer.Option(
        "--subject-regex", metavar="REGEX",
        help="First group, searched in the file name, is the subject id (e.g. '^([^_]+)_'). "
             "Default: each image is its own subject.")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Ingest class-per-folder 2D images (grayscale, resized, [0, 1]); re-running resumes."""
    from ssltk.store.ingest_images import ingest_images

    _positive(size, "--size")
    with progress_bar("ingest images") as progress:
        report = ingest_images(src, out, size, dtype=dtype.value, compression=compression.value,
                               on_error=on_error.value, subject_regex=subject_regex,
                               overwrite=overwrite, progress=progress, max_error=max_error)
    _summary(report)


command = app  # registered by ssltk.cli as the `ssltk ingest` group
