"""``ssltk ingest images``: class-per-folder PNG/JPEG images (2D) -> one volume store.

Layout: ``SRC/<class>/<image>`` (or ``SRC/<split>/<class>/<image>``, as in Kaggle's Alzheimer
MRI dataset with ``train/`` and ``test/``). Each image becomes a ``(1, H, W)`` row: converted to
grayscale, resized bilinearly to ``size``, intensities scaled to [0, 1] (8-bit by /255, 16-bit by
/65535, float images by min-max): a fixed scale, so a binary 0/255 mask is stored as 0/1 and a
blank image stays blank (the ingest warns about it, ``ssltk store verify`` reports it). An image
with structure that the resize turns constant is refused. Columns: ``label`` (the class
folder), ``split`` (the folder above it, "" when absent), ``subject_id``, ``session``.

Subject ids: 2D datasets rarely say which images come from the same person. By default each
image is its own subject, with ``subject_id`` = its path below SRC without the suffix
(``MildDemented/26 (19)``: file names alone repeat across class folders in the Kaggle set).
When file names do encode a subject (``<subject>_<slice>.png``), pass ``subject_regex``
(e.g. ``^([^_]+)_``): its first group is the subject id and the image's path becomes its
``session``, so subject-level splits keep all slices of a subject together.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from ssltk.store.encoding import Encoding
from ssltk.store.ingest_common import (IngestError, IngestReport, Item, OnError, Processed,
                                       Progress, dedupe, fail, ingest_lock, open_or_resume,
                                       run_items, sha256_file, write_skip_report)
from ssltk.store.intensity import check_not_flattened
from ssltk.store.schema import ColumnSpec, StoreArgumentError
from ssltk.store.writer import StoreWriter

SUFFIXES = (".png", ".jpg", ".jpeg")
# --dtype auto keeps 8 bits for images: 2D sets are small, so fewer grey levels gain nothing,
# and unresized 8-bit images are then stored exactly (1/508: the finest uint8 grid).
IMAGES_MAX_ERROR = 1 / 508
COLUMNS = {"subject_id": ColumnSpec("id"), "session": ColumnSpec("id"),
           "label": ColumnSpec("categorical", description="class folder"),
           "split": ColumnSpec("categorical", description="folder above the class folder")}


def discover_images(src: Path, subject_regex: str | None, on_error: OnError,
                    report: IngestReport) -> list[Item]:
    """Images under ``src`` (recursive, sorted) with label, split, subject and session."""
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise IngestError(f"no PNG/JPEG images under {src}; expected SRC/<class>/<image>.png")
    regex = None
    if subject_regex:
        try:
            regex = re.compile(subject_regex)
        except re.error as exc:
            raise IngestError(f"--subject-regex {subject_regex!r} is not a valid regular "
                              f"expression: {exc}") from None
    items = []
    for path in files:
        rel = path.relative_to(src)
        if len(rel.parts) < 2:
            fail(path, "image is not inside a class folder; put each class in its own folder "
                       "SRC/<class>/", on_error, report)
            continue
        name = rel.with_suffix("").as_posix()
        meta = {"label": rel.parts[-2], "split": "/".join(rel.parts[:-2])}
        if regex is None:
            items.append(Item(path, name, "", meta))
            continue
        match = regex.search(path.stem)
        if match is None:
            fail(path, f"file name does not match --subject-regex {subject_regex!r}; rename it "
                       f"or change the regex", on_error, report)
            continue
        items.append(Item(path, match.group(1) if match.groups() else match.group(0), name, meta))
    return items


def load_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """``(1, H, W)`` float32 in [0, 1]; raises ValueError with the fix for unreadable files."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L"):
                arr, scale = np.asarray(img, dtype=np.float32), 65535.0
            elif mode in ("I", "F"):
                arr, scale = np.asarray(img, dtype=np.float32), None
            else:
                arr, scale = np.asarray(img.convert("L"), dtype=np.float32), 255.0
    except Exception as exc:  # noqa: BLE001  (PIL raises many types on corrupt files)
        first = str(exc).splitlines()[0][:200] if str(exc) else "corrupt"
        raise ValueError(f"cannot read the image ({type(exc).__name__}: {first}); the file is "
                         f"corrupt or not an image: replace or remove it") from None
    if scale is None:
        lo, hi = float(arr.min()), float(arr.max())
        arr, scale = arr - lo, max(hi - lo, 1e-8)
    resized = Image.fromarray((arr / scale).astype(np.float32)).resize((size[1], size[0]),
                                                            Image.Resampling.BILINEAR)
    out = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    if not np.isfinite(out).all():
        raise ValueError("image has NaN/Inf values; replace or remove it")
    check_not_flattened(arr, out, f"resizing to --size {size[0]} {size[1]}",
                        "its structure is finer than the new pixels: pass a larger --size")
    return out[None]


def process_image(item: Item, size: tuple[int, int]) -> Processed:
    """Load, resize and hash one image (runs in the main process: images are cheap)."""
    try:
        volume = load_image(item.path, size)
        sha = sha256_file(item.path)
    except ValueError as exc:
        return Processed(error=str(exc))
    except OSError as exc:
        return Processed(error=f"cannot read the file ({exc.strerror or exc}); check it exists "
                               f"and is readable")
    return Processed(volume, sha)


def ingest_images(src: str | Path, out: str | Path, size: tuple[int, int],
                  dtype: str = "auto", compression: str = "zstd",
                  on_error: OnError = "abort", subject_regex: str | None = None,
                  overwrite: bool = False, progress: Progress | None = None,
                  max_error: float | None = None) -> IngestReport:
    """Ingest a class-per-folder image dataset into the store ``out`` (resumable).

    Args:
        src: root folder, ``SRC/<class>/*.png`` or ``SRC/<split>/<class>/*.jpg``.
        out: the store to create, or resume when it exists (same parameters required).
        size: ``(H, W)`` of the stored images.
        dtype, compression: of the stored images (``auto``: see :mod:`ssltk.store.encoding`;
            for images its default tolerance is 1/508: 8 bits, exact for 8-bit images).
        on_error: ``abort`` at the first unreadable image, or ``skip`` it.
        subject_regex: regex whose first group, searched in the file stem, is the subject id.
        overwrite: replace ``out`` instead of resuming it.
        progress: ``progress(done, total)`` after each image.
        max_error: integer storage: max abs error as a fraction of each image's range.
    """
    src, out = Path(src), Path(out)
    size = (int(size[0]), int(size[1]))
    if dtype == "auto" and max_error is None:
        max_error = IMAGES_MAX_ERROR
    encoding = Encoding.resolve(dtype, max_error)
    if min(size) < 1:
        raise StoreArgumentError(f"--size {size[0]} {size[1]}: give a height and width >= 1")
    with ingest_lock(out):
        return _ingest_images(src, out, size, encoding, compression, on_error, subject_regex,
                              overwrite, progress)


def _ingest_images(src: Path, out: Path, size: tuple[int, int], encoding: Encoding,
                   compression: str, on_error: OnError, subject_regex: str | None,
                   overwrite: bool, progress: Progress | None) -> IngestReport:
    report = IngestReport(out)
    items = dedupe(discover_images(src, subject_regex, on_error, report), on_error, report)
    record = {"pipeline": "ssltk ingest images", "size": list(size), "grayscale": True,
              "interpolation": "bilinear", "intensity": "[0, 1]",
              "subject_regex": subject_regex}
    writer = open_or_resume(out, overwrite, record, COLUMNS, encoding, compression)
    if writer is None:
        writer = StoreWriter.create(out, shape=(1, *size), columns=COLUMNS,
                                    dtype=encoding.requested, max_error=encoding.max_error,
                                    compression=compression, spacing=None, preprocessing=record,
                                    overwrite=overwrite, orientation="image")
    else:
        report.already = writer.committed
        items = [i for i in items if i.key not in writer.keys()]
    try:
        run_items(items, functools.partial(process_image, size=size), lambda i, r: writer,
                  on_error=on_error, workers=1, report=report, total=len(items),
                  progress=progress)
    finally:
        writer.close()
        write_skip_report(report)
    return report
