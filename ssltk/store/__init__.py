"""HDF5 volume store: one file holds a cohort's volumes, metadata table and provenance.

>>> from ssltk.store import VolumeStore, StoreWriter, ColumnSpec
>>> with StoreWriter.create("cohort.h5", shape=(1, 32, 32, 32),
...                         columns={"age": ColumnSpec("continuous", unit="years")}) as w:
...     w.append(volume, {"subject_id": "01", "age": 70.0})
>>> store = VolumeStore.open("cohort.h5")

``preprocess_nifti(path, NiftiOptions(...))`` is ingest's per-file preprocessing (load, RAS,
resample, normalise, pad/crop), for code that must prepare new scans the same way.

See docs/store.md for the layout, crash safety and the ingest commands.
"""

from ssltk.store.ingest_nifti import NiftiOptions, preprocess_nifti
from ssltk.store.reader import VolumeStore
from ssltk.store.schema import ColumnSpec, StoreError
from ssltk.store.writer import StoreWriter

__all__ = ["ColumnSpec", "NiftiOptions", "StoreError", "StoreWriter", "VolumeStore",
           "preprocess_nifti"]
