"""Convert a PneumoniaMNIST ``.npz`` into an ssltk store (2D, 1 channel, 28 x 28, [0, 1]).

    python docs/studies/pneumonia/make_store.py pneumoniamnist.npz --out data/pneumonia.h5

Works on the official MedMNIST v2 file (``pneumoniamnist.npz`` from zenodo.org/records/10519652,
Yang et al., Scientific Data 2023, CC BY 4.0) and on any file with the same keys
``{train,val,test}_{images,labels}`` (uint8 images ``(N, 28, 28)``, labels ``(N, 1)``), such
as the class-balanced subset the study used (see docs/studies/pneumonia.md for its sha256).

Each image is its own subject (``subject_id`` = ``<split>-<index>``). Columns:

* ``label``: ``normal`` (0) or ``pneumonia`` (1) - the finetuning target;
* ``split``: the file's ``train`` / ``val`` / ``test`` split;
* ``mean_intensity``, ``centre_intensity``: the mean of the image, and of its central half
  (rows and columns 7-20, mostly lung fields and mediastinum), in [0, 1]. Computed from the
  pixels alone, no label: the unsupervised meta-data the study gives y-Aware's RBF anchor.

Uses only the public ``ssltk.store.StoreWriter`` API; the store is written atomically.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from ssltk.store import ColumnSpec, StoreWriter

CLASSES = ("normal", "pneumonia")
SPLITS = ("train", "val", "test")
COLUMNS = {
    "label": ColumnSpec("categorical", description="normal or pneumonia (PneumoniaMNIST label)"),
    "split": ColumnSpec("categorical", description="PneumoniaMNIST split of the image"),
    "mean_intensity": ColumnSpec("continuous", description="mean pixel value in [0, 1]"),
    "centre_intensity": ColumnSpec("continuous",
                                   description="mean of the central 14 x 14 pixels, in [0, 1]"),
}


def image_rows(npz: Path):
    """Yield ``(subject_id, image (1, 28, 28) float32 in [0, 1], metadata)`` for every image."""
    data = np.load(npz)
    missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in data]
    if missing:
        raise SystemExit(f"{npz}: missing key(s) {', '.join(missing)}; expected a "
                         "PneumoniaMNIST .npz with {train,val,test}_{images,labels}")
    for split in SPLITS:
        images, labels = data[f"{split}_images"], data[f"{split}_labels"].reshape(-1)
        for i, (img, y) in enumerate(zip(images, labels)):
            x = img.astype(np.float32) / 255.0
            meta = {"label": CLASSES[int(y)], "split": split,
                    "mean_intensity": float(x.mean()),
                    "centre_intensity": float(x[7:21, 7:21].mean())}
            yield f"{split}-{i:04d}", x[None], meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("npz", type=Path, help="PneumoniaMNIST .npz file")
    parser.add_argument("--out", type=Path, required=True, help="store to write (.h5)")
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    sha = hashlib.sha256(args.npz.read_bytes()).hexdigest()
    record = {"pipeline": "docs/studies/pneumonia/make_store.py", "source_sha256": sha,
              "intensity": "uint8 / 255"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with StoreWriter.create(args.out, shape=(1, 28, 28), columns=COLUMNS, dtype=args.dtype,
                            preprocessing=record, overwrite=args.overwrite,
                            orientation="image", flush_every=256) as writer:
        for subject, image, meta in image_rows(args.npz):
            writer.append(image, {"subject_id": subject, **meta},
                          source={"path": args.npz.name, "sha256": sha})
        n = len(writer)
    print(f"{args.out}: {n} images, source sha256 {sha}")


if __name__ == "__main__":
    main()
