"""Applying a model bundle to new scans: inputs, the bundle's preprocessing, batched prediction.

Inputs are NIfTI files, BIDS or flat folders of them, 2D images (or folders of them) and
stores. A file is preprocessed by the very functions ``ssltk ingest`` runs on each file
(:func:`ssltk.store.ingest_nifti.preprocess_with_affine` after
:func:`~ssltk.store.ingest_nifti.load_nifti`, :func:`ssltk.store.ingest_images.load_image`),
with the options recorded in the bundle, so a scan seen by ``predict`` is the row ``ingest``
would have stored (before the store's float16 rounding). Store rows are used as stored.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ssltk.engine.bundle import Bundle
from ssltk.errors import SsltkError

NIFTI_RE = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
STORE_SUFFIXES = (".h5", ".hdf5")


class ScanError(SsltkError):
    """One input cannot be used with this model (message: the file, what is wrong, the fix)."""


@dataclass
class Input:
    """One scan to predict on: a file (``kind`` nifti or image) or a store row."""

    kind: str
    path: Path
    id: str
    row: int | None = None

    @property
    def source(self) -> str:
        return f"{self.path}#{self.row}" if self.row is not None else str(self.path)


@dataclass
class Scan:
    """A preprocessed scan ``(C, *spatial)`` float32; NIfTI input keeps its geometry."""

    input: Input
    volume: np.ndarray
    affine: np.ndarray | None = None  # voxel -> world of ``volume`` (NIfTI input)
    input_affine: np.ndarray | None = None
    input_shape: tuple[int, ...] | None = None


@dataclass
class Prediction:
    input: Input
    output: np.ndarray  # (K,) probabilities, or (1,) value


@dataclass
class PredictReport:
    predictions: list[Prediction] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


# -- inputs ------------------------------------------------------------------------------------
def _strip(name: str) -> str:
    return NIFTI_RE.sub("", name)


def _folder_inputs(folder: Path) -> list[Input]:
    from ssltk.store.ingest_nifti import discover_nifti

    has_nifti = any(folder.glob("sub-*")) or any(NIFTI_RE.search(p.name)
                                                 for p in folder.iterdir())
    if has_nifti:
        return [Input("nifti", it.path, _strip(it.path.name)) for it in discover_nifti(folder)]
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise SsltkError(f"{folder} holds no NIfTI files (BIDS or flat) and no PNG/JPEG "
                         f"images; check the path")
    return [Input("image", p, p.relative_to(folder).with_suffix("").as_posix()) for p in images]


def _store_inputs(path: Path) -> list[Input]:
    from ssltk.store import VolumeStore

    with VolumeStore.open(path) as store:
        subjects = np.asarray(store.meta["subject_id"]).astype(str)
        sessions = (np.asarray(store.meta["session"]).astype(str) if "session" in store.columns
                    else [""] * len(subjects))
    return [Input("store", path, s + (f"_{ses}" if ses else ""), row)
            for row, (s, ses) in enumerate(zip(subjects, sessions))]


def discover_inputs(paths: Iterable[str | Path]) -> list[Input]:
    """Every scan named by ``paths``: files, BIDS/flat NIfTI folders, image folders, stores."""
    out: list[Input] = []
    for path in map(Path, paths):
        if path.is_dir():
            out += _folder_inputs(path)
        elif not path.is_file():
            raise SsltkError(f"input {path} does not exist; check the path")
        elif NIFTI_RE.search(path.name):
            out.append(Input("nifti", path, _strip(path.name)))
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            out.append(Input("image", path, path.stem))
        elif path.suffix.lower() in STORE_SUFFIXES:
            out += _store_inputs(path)
        else:
            raise SsltkError(f"input {path} is not a NIfTI file (.nii/.nii.gz), an image "
                             f"(.png/.jpg) or a store (.h5); check the path")
    return out


# -- preprocessing -----------------------------------------------------------------------------
def nifti_options(prep: dict):
    """The :class:`~ssltk.store.ingest_nifti.NiftiOptions` of a bundle's preprocessing."""
    from ssltk.store.ingest_nifti import NiftiOptions

    return NiftiOptions(shape=tuple(prep["shape"]), spacing=prep.get("spacing"),
                        normalize=prep.get("normalize", "none"))


def _mismatch(inp: Input, what: str, bundle: Bundle, fix: str) -> ScanError:
    dims, ch = bundle.spatial_dims, bundle.in_channels
    return ScanError(f"{inp.source}: {what}, but model '{bundle.name}' takes {dims}D scans "
                     f"with {ch} channel(s); {fix}")


def load_scan(inp: Input, bundle: Bundle, store_cache: dict | None = None) -> Scan:
    """Read and preprocess one input exactly as ``ssltk ingest`` would have.

    Raises:
        ScanError: unreadable file, or a scan whose dimensionality or channels do not fit.
    """
    prep = bundle.preprocessing
    if inp.kind == "store":
        return _store_scan(inp, bundle, store_cache if store_cache is not None else {})
    if bundle.in_channels != 1:
        raise _mismatch(inp, "a 1-channel file", bundle, "predict on a store with the model's "
                                                          "channels")
    if inp.kind == "image":
        from ssltk.store.ingest_images import load_image

        if bundle.spatial_dims != 2:
            raise _mismatch(inp, "a 2D image", bundle, "give NIfTI volumes")
        try:
            return Scan(inp, load_image(inp.path, tuple(prep["shape"])))
        except ValueError as exc:
            raise ScanError(f"{inp.path}: {exc}") from None
    from ssltk.store.ingest_nifti import load_nifti, preprocess_with_affine

    if bundle.spatial_dims != 3:
        raise _mismatch(inp, "a 3D NIfTI volume", bundle, "give 2D images (.png/.jpg)")
    try:
        data, affine = load_nifti(inp.path)
        volume, _, out_affine = preprocess_with_affine(data, affine, nifti_options(prep))
    except ValueError as exc:
        raise ScanError(f"{inp.path}: {exc}") from None
    return Scan(inp, volume, out_affine, affine, tuple(data.shape))


def _store_scan(inp: Input, bundle: Bundle, cache: dict) -> Scan:
    from ssltk.store import VolumeStore

    if inp.path not in cache:
        store = VolumeStore.open(inp.path)
        want = (bundle.in_channels, *bundle.preprocessing["shape"])
        if tuple(store.shape) != want:
            store.close()
            raise _mismatch(inp, f"store rows have shape {tuple(store.shape)} (model: {want})",
                            bundle, "ingest the scans with the bundle's preprocessing")
        cache[inp.path] = store
    return Scan(inp, np.asarray(cache[inp.path][inp.row], dtype=np.float32))


def iter_scans(inputs: list[Input], bundle: Bundle, on_error: str,
               skipped: list[tuple[str, str]]) -> Iterator[Scan]:
    """Preprocessed scans in input order; bad ones raise (abort) or are listed in ``skipped``."""
    cache: dict = {}
    try:
        for inp in inputs:
            try:
                yield load_scan(inp, bundle, cache)
            except ScanError as exc:
                if on_error != "skip":
                    raise ScanError(f"{exc} (or pass --on-error skip)") from None
                skipped.append((inp.source, str(exc)))
    finally:
        for store in cache.values():
            store.close()


# -- prediction --------------------------------------------------------------------------------
@torch.no_grad()
def forward(bundle: Bundle, volumes: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(B, C, *spatial)`` -> ``(B, K)`` probabilities or ``(B, 1)`` values (float64)."""
    device = next(bundle.model.parameters()).device
    x = torch.as_tensor(volumes, dtype=torch.float32, device=device)
    out = bundle.outputs(bundle.model(x).float())
    return out.reshape(len(x), -1).double().cpu().numpy()


def predict(bundle: Bundle, inputs: list[Input], *, batch_size: int = 8,
            on_error: str = "abort",
            progress: Callable[[int, int], None] | None = None) -> PredictReport:
    """Predict every input, ``batch_size`` scans per forward pass."""
    report = PredictReport()
    batch: list[Scan] = []
    done = 0

    def flush() -> None:
        nonlocal done
        out = forward(bundle, np.stack([s.volume for s in batch]))
        report.predictions += [Prediction(s.input, o) for s, o in zip(batch, out)]
        done += len(batch)
        batch.clear()
        if progress is not None:
            progress(done + len(report.skipped), len(inputs))

    for scan in iter_scans(inputs, bundle, on_error, report.skipped):
        batch.append(scan)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return report


def predicted_label(bundle: Bundle, output: np.ndarray) -> str:
    if bundle.task == "classification":
        return bundle.classes[int(np.argmax(output))]
    return f"{float(output[0]):.6g}"


def csv_header(bundle: Bundle) -> list[str]:
    if bundle.task == "classification":
        return ["id", "source", *(f"prob_{c}" for c in bundle.classes), "predicted_class"]
    return ["id", "source", f"predicted_{bundle.meta['target']}"]


def write_csv(bundle: Bundle, predictions: list[Prediction], out: str | Path) -> Path:
    """One row per scan (written to a temporary name, then renamed)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(csv_header(bundle))
        for p in predictions:
            values = [f"{v:.6f}" for v in p.output] if bundle.task == "classification" else []
            writer.writerow([p.input.id, p.input.source, *values,
                             predicted_label(bundle, p.output)])
    os.replace(tmp, out)
    return out


def write_skipped(skipped: list[tuple[str, str]], out: str | Path) -> Path | None:
    """``<out>.skipped.tsv`` (input, reason); a stale one is removed when nothing was skipped."""
    path = Path(out).with_name(Path(out).name + ".skipped.tsv")
    if not skipped:
        path.unlink(missing_ok=True)
        return None
    lines = ["input\treason"] + [f"{s}\t{r.replace(chr(9), ' ')}" for s, r in skipped]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
