"""Embeddings of a whole store, and export of a pretrained encoder to its framework's weights."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch

from ssltk.data.loading import BatchReader
from ssltk.engine import runtime
from ssltk.engine.finetuning import embed_rows, load_encoder, load_encoder_state
from ssltk.errors import SsltkError
from ssltk.registry import Registry, get_registry
from ssltk.specs import ComponentSpec
from ssltk.store import VolumeStore


def embed_store(store_path: str | Path, backbone: ComponentSpec | dict, encoder: str | Path | None,
                out: str | Path, *, batch_size: int = 8, device: str = "auto",
                registry: Registry | None = None) -> Path:
    """Write the ``(N, out_dim)`` embeddings of every row of a store to an HDF5 file.

    The file holds ``/embeddings`` (float32), ``/meta/<column>`` copied from the store
    (strings for categorical/id columns) and attrs naming the store, backbone and encoder. It
    is written to a temporary name and renamed, so a crash never leaves a partial file.
    """
    registry = registry or get_registry()
    spec = backbone if isinstance(backbone, ComponentSpec) else ComponentSpec(**backbone)
    ctx = runtime.Context(runtime.resolve_device(device))
    store = VolumeStore.open(store_path)
    net = load_encoder(spec, encoder, store.shape[0], store.spatial_dims, registry).to(ctx.device)

    emb = embed_rows(net, BatchReader(store), np.arange(len(store)), ctx, batch_size)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("embeddings", data=emb)
        for col, spec_ in store.columns.items():
            values = store.meta[col]
            data = values if spec_.kind == "continuous" else np.asarray(values).astype("S")
            f.create_dataset(f"meta/{col}", data=data)
        f.attrs.update({"store": str(store_path), "backbone": spec.name,
                        "encoder": str(encoder or "scratch")})
    os.replace(tmp, out)
    return out


def export_encoder(encoder: str | Path, out: str | Path, *,
                   registry: Registry | None = None) -> Path:
    """Save a pretraining's ``encoder.pt`` as the plain ``state_dict`` of the network it wraps.

    The mapping is the backbone's own (:meth:`~ssltk.interfaces.Backbone.export_state_dict`):
    the built-in backbones write the MONAI network's state_dict, which loads into the matching
    ``monai.networks.nets`` network (``feed_forward=False`` for ResNets; ``strict=False`` for
    DenseNet-121, whose classification layer is not trained).
    """
    registry = registry or get_registry()
    state, meta = load_encoder_state(encoder)
    name = meta.get("backbone")
    try:
        backbone = registry.get("backbones", str(name))
    except SsltkError as exc:
        raise SsltkError(f"{encoder} was pretrained with backbone '{name}': {exc}") from None
    plain = backbone.export_state_dict(state)
    if plain is None:
        raise SsltkError(f"backbone '{name}' of {encoder} wraps no other framework's network, "
                         "so there is nothing to export; load encoder.pt's 'backbone' state "
                         "into ssltk's own backbone instead")
    torch.save(plain, out)
    return Path(out)
