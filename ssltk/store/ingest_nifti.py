"""``ssltk ingest nifti``: a BIDS tree or a folder of NIfTI files -> one volume store.

Each file is loaded with nibabel and preprocessed with MONAI transforms, in this order:
reorient to RAS (``Orientation``), resample to ``spacing`` mm (``Spacing``, bilinear), normalise
intensities (:mod:`ssltk.store.intensity`: ``percentile``, the default, ``zscore`` or
``none``), then pad with zeros or centre-crop to ``shape`` (``ResizeWithPadOrCrop``).
Normalising before padding keeps the padding equal to the background. A file with structure
that a step turns into a constant volume is refused (one line: the step and the fix), never
stored.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssltk.store.encoding import Encoding
from ssltk.store.ingest_common import (IngestError, IngestReport, InputFileError, Item, OnError,
                                       Processed, Progress, dedupe, fail, ingest_lock,
                                       open_or_resume, run_items, sha256_file,
                                       write_skip_report)
from ssltk.store.intensity import PERCENTILES, Normalize, check_not_flattened, normalize
from ssltk.store.participants import Participants, read_participants, strip_prefix
from ssltk.store.schema import ColumnSpec
from ssltk.store.writer import StoreWriter

_SUB = re.compile(r"(?:^|_)sub-([A-Za-z0-9]+)")
_SES = re.compile(r"(?:^|_)ses-([A-Za-z0-9]+)")


@dataclass(frozen=True)
class NiftiOptions:
    """Preprocessing of ``ssltk ingest nifti`` (recorded in the store's attrs).

    Attributes:
        shape: ``(D, H, W)`` to pad/crop to; None keeps the first volume's shape for all.
        spacing: isotropic voxel size in mm to resample to; None keeps each file's grid.
        normalize: ``percentile`` (default), ``zscore`` or ``none``.
    """

    shape: tuple[int, int, int] | None = None
    spacing: float | None = None
    normalize: Normalize = "percentile"

    def record(self) -> dict:
        """The JSON-able description stored as the ``preprocessing`` attr."""
        rec = {"pipeline": "ssltk ingest nifti", "orientation": "RAS",
               "shape": list(self.shape) if self.shape else None, "spacing": self.spacing,
               "interpolation": "bilinear", "normalize": self.normalize}
        if self.normalize == "percentile":
            rec["percentiles"] = list(PERCENTILES)
        return rec

    @classmethod
    def from_record(cls, record: dict) -> NiftiOptions:
        """The options a store was made with, from its ``preprocessing`` attr (for inference
        on new scans: ``preprocess_nifti(path, NiftiOptions.from_record(store.attrs[...]))``)."""
        if record.get("pipeline") != "ssltk ingest nifti":
            raise IngestError(f"preprocessing {record.get('pipeline')!r} is not that of "
                              f"'ssltk ingest nifti'; this store was not made from NIfTI files")
        shape = record.get("shape")
        return cls(shape=tuple(shape) if shape else None, spacing=record.get("spacing"),
                   normalize=record.get("normalize", "percentile"))


def _strip_nii(name: str) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", name)


def _item_of(path: Path) -> Item:
    """Subject and session from BIDS entities in the file name (or folders), else the stem."""
    stem = _strip_nii(path.name)
    sub = _SUB.search(stem)
    if sub is None:
        return Item(path, strip_prefix(stem, "sub-"))
    ses = _SES.search(stem)
    if ses is None:
        ses = next((_SES.search(p) for p in reversed(path.parent.parts) if p.startswith("ses-")),
                   None)
    return Item(path, sub.group(1), ses.group(1) if ses else "")


def discover_nifti(src: Path, pattern: str | None = None) -> list[Item]:
    """NIfTI files under ``src``, sorted, each with its subject and session.

    Without ``pattern``: ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]`` when ``src`` holds ``sub-*``
    folders (BIDS), else every ``*.nii``/``*.nii.gz`` directly in ``src``.
    """
    if pattern:
        globs = [pattern]
    elif any(p.is_dir() for p in src.glob("sub-*")):
        globs = ["sub-*/anat/*_T1w.nii*", "sub-*/ses-*/anat/*_T1w.nii*"]
    else:
        globs = ["*.nii", "*.nii.gz"]
    files = sorted({p for g in globs for p in src.glob(g)
                    if p.is_file() and re.search(r"\.nii(\.gz)?$", p.name)})
    if not files:
        raise IngestError(f"no NIfTI files in {src} matching {' or '.join(globs)}; check the "
                          f"path, or pass --pattern (e.g. '**/*.nii.gz')")
    return [_item_of(p) for p in files]


MAX_VOXELS = 2**31  # a header claiming more is corrupt (or no brain MRI): refuse, don't allocate


def load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(D, H, W)`` float32 data and 4x4 affine; raises ValueError with the fix."""
    import nibabel as nib

    try:
        # nibabel fixes some header faults itself and logs each fix on stderr: keep the CLI's
        # output to its own lines (what it cannot fix still raises).
        with _quiet(nib.imageglobals.logger):
            img = nib.load(str(path))
            shape = tuple(int(n) for n in img.shape)
            if math.prod(shape) > MAX_VOXELS or min(shape, default=0) < 1:
                raise ValueError(f"header claims a {'x'.join(map(str, shape))} image")
            data = np.asarray(img.dataobj, dtype=np.float32)
            affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # noqa: BLE001  (any failure of a corrupt file is the file's fault)
        first = str(exc).splitlines()[0][:200] if str(exc) else "corrupt"
        raise ValueError(f"cannot read the image ({type(exc).__name__}: {first}); the file "
                         f"is corrupt or truncated: re-export or re-download it") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        what = f"4D with {data.shape[3]} volumes" if data.ndim == 4 else f"{data.ndim}D"
        raise ValueError(f"image is {what} (shape {data.shape}), a 3D volume was expected: "
                         f"extract one volume (e.g. fslroi) or exclude the file with --pattern")
    bad = int((~np.isfinite(data)).sum())
    if bad:
        raise ValueError(f"image has {bad} NaN/Inf voxels; fix or remove the file")
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError("its affine (sform/qform) is singular or not finite; fix the header "
                         "(e.g. fslorient) or remove the file")
    return data, affine


@contextlib.contextmanager
def _quiet(logger: logging.Logger):
    """Silence a logger for a while (its level, not its handlers: without handlers, logging's
    last-resort handler would print warnings anyway)."""
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def preprocess(data: np.ndarray, affine: np.ndarray,
               options: NiftiOptions) -> tuple[np.ndarray, tuple[float, ...]]:
    """``(D, H, W)`` data -> ``(1, *shape)`` float32 volume and its voxel size in mm."""
    volume, zooms, _ = preprocess_with_affine(data, affine, options)
    return volume, zooms


def preprocess_with_affine(data: np.ndarray, affine: np.ndarray, options: NiftiOptions,
                           ) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """:func:`preprocess`, plus the 4x4 voxel-to-world affine of the output grid.

    The affine maps the output volume's voxels into the input file's world space (MONAI's
    MetaTensor tracks it through every transform), so a map computed on the volume can be
    resampled back onto the input file's grid (``ssltk explain``).
    """
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation, ResizeWithPadOrCrop, Spacing

    x = MetaTensor(torch.from_numpy(data[None]), affine=torch.from_numpy(affine))
    x = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(x)
    if options.spacing is not None:
        grid = Spacing(pixdim=(options.spacing,) * 3, mode="bilinear")(x)
        check_not_flattened(data, grid.numpy(), f"resampling to --spacing {options.spacing:g} mm",
                            "its structure is smaller than the new voxels: use a finer --spacing")
        x = grid
    zooms = tuple(float(z) for z in np.sqrt((x.affine.numpy()[:3, :3] ** 2).sum(axis=0)))
    vol = MetaTensor(torch.from_numpy(normalize(x.numpy().astype(np.float32, copy=False),
                                                options.normalize)), affine=x.affine)
    if options.shape is not None:
        cropped = ResizeWithPadOrCrop(spatial_size=options.shape)(vol)
        check_not_flattened(vol.numpy(), cropped.numpy(),
                            f"centre-cropping to --shape {' '.join(map(str, options.shape))}",
                            "its structure lies outside the crop: pass a larger --shape")
        vol = cropped
    out_affine = vol.affine.numpy().astype(np.float64)
    return np.ascontiguousarray(vol.numpy(), dtype=np.float32), zooms, out_affine


def preprocess_nifti(path: str | Path, options: NiftiOptions = NiftiOptions()
                     ) -> tuple[np.ndarray, tuple[float, ...]]:
    """Load one NIfTI file and preprocess it exactly as ``ssltk ingest nifti`` does.

    The single entry point of the ingest preprocessing (also for inference on new scans, which
    must see what training saw): load with nibabel, check (3D, finite, sane header),
    reorient to RAS, resample to ``options.spacing``, normalise intensities, then pad/crop to
    ``options.shape`` (see the module docstring for the order and why).

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        options: the preprocessing; a store's is ``NiftiOptions(**...)`` of its recorded
            ``preprocessing`` attr (shape, spacing, normalize).

    Returns:
        ``(volume, zooms)``: ``(1, *shape)`` float32 C-contiguous, and the voxel size in mm
        after resampling.

    Raises:
        InputFileError: the file cannot be read or preprocessed (one line: path, reason, fix).
    """
    try:
        data, affine = load_nifti(Path(path))
        return preprocess(data, affine, options)
    except ValueError as exc:
        raise InputFileError(path, str(exc)) from None
    except (RuntimeError, ArithmeticError, IndexError, TypeError, np.linalg.LinAlgError) as exc:
        # MONAI on a header it cannot reorient/resample (degenerate affine, odd shape...)
        raise InputFileError(path, f"cannot preprocess the image ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                                   f"check its header, or remove the file") from None


def process_nifti(item: Item, options: NiftiOptions) -> Processed:
    """Load, check, preprocess and hash one file (runs in a worker)."""
    try:
        volume, zooms = preprocess_nifti(item.path, options)
        sha = sha256_file(item.path)
    except InputFileError as exc:
        return Processed(error=exc.reason)
    except OSError as exc:  # vanished or unreadable between discovery and now
        return Processed(error=f"cannot read the file ({exc.strerror or exc}); check it exists "
                               f"and is readable")
    return Processed(volume, sha, info={"zooms": zooms})


def attach_participants(items: list[Item], table: Participants | None, on_error: OnError,
                        report: IngestReport) -> list[Item]:
    """Give each item its participants row; files without a row fail, rows without a file warn."""
    if table is None:
        return items
    kept = []
    for item in items:
        row = table.lookup(item.subject, item.session)
        if row is None:
            who = f"sub-{item.subject}" + (f" ses-{item.session}" if table.by_session else "")
            fail(item.path, f"no row for {who} in {table.path.name}; add one (n/a for unknown "
                            f"values) or remove the file", on_error, report)
            continue
        item.meta = dict(row)
        kept.append(item)
    unused = table.unused(i.key for i in items)
    if unused:
        shown = ", ".join(unused[:10]) + (f" and {len(unused) - 10} more" if len(unused) > 10
                                          else "")
        report.warn(f"{table.path.name}: {len(unused)} row(s) have no image file: {shown}")
    return kept


class _LazyWriter:
    """``get_writer`` of :func:`run_items`: creates the store on the first volume (without
    ``--shape`` the grid is only known then) and warns about voxel sizes that differ."""

    def __init__(self, writer: StoreWriter | None, report: IngestReport, options: NiftiOptions,
                 **create: object):
        self.writer, self.report, self.options, self.create = writer, report, options, create
        self.spacing = writer.attrs.get("spacing") if writer is not None else None

    def __call__(self, item: Item, result: Processed) -> StoreWriter:
        zooms = result.info["zooms"]
        if self.writer is None:
            self.spacing = (self.options.spacing,) * 3 if self.options.spacing else zooms
            self.writer = StoreWriter.create(shape=result.volume.shape, spacing=self.spacing,
                                             preprocessing=self.options.record(), **self.create)
        if self.spacing and not np.allclose(zooms, self.spacing, rtol=0.01):
            self.report.warn(f"{item.path}: voxel size {tuple(round(z, 3) for z in zooms)} "
                             f"differs from the store's {tuple(self.spacing)}; pass --spacing "
                             f"to resample all files")
        return self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def ingest_nifti(src: str | Path, out: str | Path, participants: str | Path | None = None,
                 options: NiftiOptions = NiftiOptions(), dtype: str = "auto",
                 compression: str = "zstd", workers: int = 1, on_error: OnError = "abort",
                 pattern: str | None = None, overwrite: bool = False,
                 categorical: Iterable[str] = (), progress: Progress | None = None,
                 max_error: float | None = None) -> IngestReport:
    """Ingest NIfTI files into the store ``out``, resuming it when it exists.

    Args:
        src: a BIDS tree or a flat folder of ``.nii``/``.nii.gz``.
        out: the store to create (or resume: rows whose (subject, session) are committed are
            skipped; other preprocessing parameters are an error).
        participants: table of metadata; default ``src/participants.tsv`` when present.
        options: the preprocessing (see :class:`NiftiOptions`).
        dtype, compression: of the stored volumes (``auto``: see :mod:`ssltk.store.encoding`).
        workers: processes loading and preprocessing files (the main process writes).
        on_error: ``abort`` at the first bad file, or ``skip`` it and list it in
            ``<out>.skipped.tsv``.
        pattern: glob relative to ``src`` selecting the files.
        overwrite: replace ``out`` instead of resuming it.
        categorical: participants columns to keep categorical even when numeric.
        progress: ``progress(done, total)`` after each file.
        max_error: integer storage: max abs error as a fraction of each volume's range.

    Raises:
        StoreLockedError: another process is writing ``out``.
        StoreWriteError: the disk filled up (committed rows are kept; re-run to resume).
    """
    src, out = Path(src), Path(out)
    encoding = Encoding.resolve(dtype, max_error)
    with ingest_lock(out):
        return _ingest_nifti(src, out, participants, options, encoding, compression, workers,
                             on_error, pattern, overwrite, categorical, progress)


def _ingest_nifti(src: Path, out: Path, participants, options: NiftiOptions, encoding: Encoding,
                  compression: str, workers: int, on_error: OnError, pattern: str | None,
                  overwrite: bool, categorical: Iterable[str],
                  progress: Progress | None) -> IngestReport:
    report = IngestReport(out)
    if participants is None and (src / "participants.tsv").is_file():
        participants = src / "participants.tsv"
    table = read_participants(participants, categorical) if participants else None
    items = dedupe(discover_nifti(src, pattern), on_error, report)
    items = attach_participants(items, table, on_error, report)
    columns = {"subject_id": ColumnSpec("id"), "session": ColumnSpec("id"),
               **(table.columns if table else {})}
    writer = open_or_resume(out, overwrite, options.record(), columns, encoding, compression)
    if writer is not None:
        report.already = writer.committed
        items = [i for i in items if i.key not in writer.keys()]
    lazy = _LazyWriter(writer, report, path=out, columns=columns, dtype=encoding.requested,
                       max_error=encoding.max_error, compression=compression, options=options,
                       overwrite=overwrite)
    try:
        run_items(items, functools.partial(process_nifti, options=options), lazy,
                  on_error=on_error, workers=workers, report=report, total=len(items),
                  progress=progress)
    finally:
        lazy.close()
        write_skip_report(report)
    if lazy.writer is None:
        report.warn(f"no volume could be written, so {out} was not created")
    return report
