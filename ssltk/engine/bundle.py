"""Model bundles: a finetuned model in a folder that ``predict``, ``explain`` and ``serve`` load.

A bundle is a directory holding

* ``weights.pt``: an ssltk checkpoint (:mod:`ssltk.engine.checkpoint`, read with
  ``torch.load(weights_only=True)``: no code is ever unpickled) whose state is
  ``{"backbone": state_dict, "head": {"weight", "bias"}}`` for a fully finetuned model, or
  ``{"backbone": state_dict, "probe": {"mean", "scale", "coef", "intercept", "classes"}}`` for a
  frozen one: the scikit-learn linear probe as plain arrays (scaler mean and scale, coefficients,
  intercept, indices of the classes seen in training);
* ``model.json``: backbone spec, head, task, target, class names, the training store's
  preprocessing, metrics, validation score, config hash and package versions.

Both modes load as one torch model, :class:`BundleModel` = backbone -> ``nn.Linear``: the
probe's standardisation is folded into the linear layer, so ``predict``, ``explain`` (Grad-CAM
needs gradients) and ``serve`` run the same network whatever the mode. Its output is class
logits (softmax gives the probe's ``predict_proba``) or, for regression, the predicted value.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ssltk.engine.checkpoint import load_checkpoint, package_versions, save_checkpoint
from ssltk.errors import SsltkError
from ssltk.registry import Registry, get_registry
from ssltk.specs import ComponentSpec

FORMAT = "ssltk-model-bundle"
FORMAT_VERSION = 1
MODEL_JSON = "model.json"
WEIGHTS = "weights.pt"
_ABSENT_LOGIT = -1e4
"""Logit of a class the probe never saw in training: probability exp(-1e4) = 0."""


class BundleModel(nn.Module):
    """``(B, C, *spatial) -> (B, K)``: the backbone's pooled features through a linear head."""

    def __init__(self, backbone: nn.Module, head: nn.Linear):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


# -- heads -------------------------------------------------------------------------------------
def probe_arrays(pipeline, task: str) -> dict[str, Tensor]:
    """The plain arrays of a fitted ``StandardScaler -> LogisticRegression|Ridge`` pipeline."""
    scaler, est = pipeline[0], pipeline[-1]
    arrays = {"mean": scaler.mean_, "scale": scaler.scale_, "coef": np.atleast_2d(est.coef_),
              "intercept": np.atleast_1d(est.intercept_)}
    out = {k: torch.as_tensor(np.asarray(v, dtype=np.float64)) for k, v in arrays.items()}
    if task == "classification":
        out["classes"] = torch.as_tensor(np.asarray(est.classes_, dtype=np.int64))
    return out


def probe_to_linear(probe: dict[str, Tensor], n_out: int) -> nn.Linear:
    """Rebuild the probe as one ``nn.Linear`` over the raw (unstandardised) features.

    Logistic regression: multinomial logits ``z = W x' + b`` on ``x' = (x - mean) / scale``, for
    the classes seen in training; a binary probe has one row ``w`` and is written as the logits
    ``(-z/2, z/2)``, whose softmax is ``(1 - sigmoid(z), sigmoid(z))`` as in scikit-learn.
    Ridge regression (``n_out = 1``, no ``classes``): the value itself.
    """
    coef, intercept = probe["coef"].double(), probe["intercept"].double()
    dim = coef.shape[1]
    weight = torch.zeros(n_out, dim, dtype=torch.float64)
    bias = torch.full((n_out,), _ABSENT_LOGIT if "classes" in probe else 0.0,
                      dtype=torch.float64)
    if "classes" not in probe:
        weight[0], bias[0] = coef[0], intercept[0]
    elif coef.shape[0] == 1:  # binary
        neg, pos = probe["classes"].tolist()
        weight[neg], weight[pos] = -coef[0] / 2, coef[0] / 2
        bias[neg], bias[pos] = -intercept[0] / 2, intercept[0] / 2
    else:
        for row, cls in enumerate(probe["classes"].tolist()):
            weight[cls], bias[cls] = coef[row], intercept[row]
    weight = weight / probe["scale"].double()  # fold (x - mean) / scale into the layer
    bias = bias - weight @ probe["mean"].double()
    layer = nn.Linear(dim, n_out)
    with torch.no_grad():
        layer.weight.copy_(weight.float())
        layer.bias.copy_(bias.float())
    return layer


def fold_standardisation(head: nn.Linear, mean: float, std: float) -> dict[str, Tensor]:
    """Head state that outputs ``value = out * std + mean`` (regression trained on z-scores)."""
    return {"weight": head.weight.detach().cpu() * std,
            "bias": head.bias.detach().cpu() * std + mean}


# -- preprocessing record ----------------------------------------------------------------------
def preprocessing_of(store) -> dict[str, Any]:
    """What ``predict`` must do to a new file so that it looks like the training store's rows.

    ``kind`` is ``nifti`` (3D: reorient to RAS, resample to ``spacing`` mm when not None,
    normalise, pad/crop to ``shape``, as ``ssltk ingest nifti``) or ``images`` (2D: grayscale,
    resize to ``shape``, [0, 1], as ``ssltk ingest images``). ``store_record`` is the store's own
    ``preprocessing`` attr, kept verbatim.
    """
    record = dict(store.attrs.get("preprocessing") or {})
    dims = store.spatial_dims
    out: dict[str, Any] = {"kind": "nifti" if dims == 3 else "images", "spatial_dims": dims,
                           "channels": int(store.shape[0]),
                           "shape": [int(s) for s in store.shape[1:]],
                           "orientation": store.attrs.get("orientation"),
                           "store_record": record}
    if dims == 3:
        spacing = record.get("spacing") if "pipeline" in record else None
        if spacing is None and "pipeline" not in record and store.spacing is not None:
            # a store not made by `ssltk ingest nifti` (e.g. ssltk synth): its voxel size
            sizes = [float(s) for s in store.spacing]
            spacing = sizes[0] if np.allclose(sizes, sizes[0], rtol=1e-3) else None
        out.update(spacing=spacing, normalize=record.get("normalize", "none"))
    return out


# -- saving ------------------------------------------------------------------------------------
def save_bundle(out: str | Path, *, run, backbone: nn.Module, head: dict[str, Tensor] | None,
                probe: dict[str, Tensor] | None, store, classes: list[str] | None,
                metrics: dict, val_score: float | None, info: dict | None = None) -> Path:
    """Write a bundle directory atomically (a new folder renamed over ``out``).

    Args:
        out: the bundle folder; an existing bundle there is replaced, anything else is an error.
        run: the :class:`~ssltk.engine.finetuning.FinetuneRun` that trained the model.
        backbone: the (finetuned or frozen) encoder.
        head, probe: exactly one of them (see the module docstring).
        store: the open training store (its preprocessing and shape are recorded).
        classes: class names in the order of the head's outputs (None for regression).
        metrics: the test metrics; val_score: the best validation score of training.
        info: extra JSON-able facts (benchmark, method, cell...).
    """
    out = check_target(out)
    state = {"backbone": {k: v.detach().cpu() for k, v in backbone.state_dict().items()}}
    state.update({"head": head} if probe is None else {"probe": probe})
    meta = _model_json(run, backbone, probe, store, classes, metrics, val_score, info or {})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_checkpoint(tmp / WEIGHTS, state, {"kind": FORMAT, "backbone": run.backbone.name})
        meta["weights_sha256"] = _sha256(tmp / WEIGHTS)
        (tmp / MODEL_JSON).write_text(json.dumps(meta, indent=2, allow_nan=True) + "\n")
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def check_target(out: str | Path) -> Path:
    """``out`` may take a bundle: missing, an empty folder, or a bundle (to be replaced)."""
    out = Path(out)
    if out.exists() and not (out / MODEL_JSON).is_file():
        if not out.is_dir() or any(out.iterdir()):
            raise SsltkError(f"{out} exists and is not a model bundle; choose another folder "
                             f"(a bundle there would be replaced)")
    return out


def _model_json(run, backbone, probe, store, classes, metrics, val_score, info) -> dict:
    n_out = len(classes) if run.task == "classification" else 1
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": info.get("name"),
        "backbone": run.backbone.model_dump(mode="json"),
        "in_channels": int(store.shape[0]), "spatial_dims": store.spatial_dims,
        "head": {"type": "linear", "in_features": int(backbone.out_dim), "out_features": n_out,
                 "source": "scikit-learn probe" if probe is not None else "trained"},
        "mode": run.mode, "task": run.task, "target": run.target,
        "classes": list(classes) if run.task == "classification" else None,
        "preprocessing": preprocessing_of(store),
        "metrics": metrics, "val_score": val_score, "config_hash": run.content_hash(),
        "training": {"store": str(run.store), "encoder": str(run.encoder) if run.encoder else None,
                     "n_train": len(run.train_rows), "n_val": len(run.val_rows),
                     "n_test": len(run.test_rows), "seed": run.seed},
        "info": info, "versions": package_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "weights": WEIGHTS,
    }


def _replace_dir(new: Path, out: Path) -> None:
    """Rename ``new`` to ``out``; an old ``out`` is moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# -- loading -----------------------------------------------------------------------------------
@dataclass
class Bundle:
    """A loaded bundle: ``meta`` is model.json, ``model`` the torch model in eval mode."""

    path: Path
    meta: dict[str, Any]
    model: BundleModel

    @property
    def name(self) -> str:
        return self.meta.get("name") or self.path.resolve().name

    @property
    def sha256(self) -> str:
        return self.meta["weights_sha256"]

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def classes(self) -> list[str] | None:
        return self.meta.get("classes")

    @property
    def preprocessing(self) -> dict[str, Any]:
        return self.meta["preprocessing"]

    @property
    def spatial_dims(self) -> int:
        return int(self.meta["spatial_dims"])

    @property
    def in_channels(self) -> int:
        return int(self.meta["in_channels"])

    def outputs(self, logits: Tensor) -> Tensor:
        """Class probabilities ``(B, K)`` (classification) or values ``(B,)`` (regression)."""
        return logits.softmax(-1) if self.task == "classification" else logits[:, 0]


def read_model_json(path: str | Path) -> dict[str, Any]:
    """``model.json`` of a bundle folder, checked; one-line errors name the folder and fix."""
    path = Path(path)
    file = path / MODEL_JSON
    if not file.is_file():
        raise SsltkError(f"{path} is not a model bundle (no {MODEL_JSON}); pass the folder "
                         f"written by `ssltk finetune --save-model` or `ssltk run`")
    try:
        meta = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SsltkError(f"{file} is not readable JSON ({exc}); re-save the bundle") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise SsltkError(f"{file} is not an ssltk model bundle of format version "
                         f"{FORMAT_VERSION} (found {meta.get('format')} "
                         f"{meta.get('format_version')}); re-save it with this ssltk")
    return meta


def load_bundle(path: str | Path, registry: Registry | None = None,
                device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle's model (eval mode) after checking the weights' SHA-256 against model.json.

    Raises:
        SsltkError: not a bundle, weights missing, altered or corrupt, backbone not installed.
    """
    path = Path(path)
    meta = read_model_json(path)
    weights = path / meta.get("weights", WEIGHTS)
    if not weights.is_file():
        raise SsltkError(f"{weights} is missing; copy the whole bundle folder")
    if _sha256(weights) != meta.get("weights_sha256"):
        raise SsltkError(f"{weights} does not match the SHA-256 recorded in {MODEL_JSON} (the "
                         f"file was altered or truncated); copy the bundle again")
    state, _ = load_checkpoint(weights)
    spec = ComponentSpec(**meta["backbone"])
    backbone = (registry or get_registry()).build(
        "backbones", spec, "backbone", in_channels=meta["in_channels"],
        spatial_dims=meta["spatial_dims"])
    backbone.load_state_dict(state["backbone"])
    n_out = meta["head"]["out_features"]
    if "probe" in state:
        head = probe_to_linear(state["probe"], n_out)
    else:
        head = nn.Linear(meta["head"]["in_features"], n_out)
        head.load_state_dict(state["head"])
    model = BundleModel(backbone, head).to(device).eval()
    return Bundle(path, meta, model)


def export_bundle(path: str | Path, out: str | Path, *, registry: Registry | None = None) -> Path:
    """Save the bundle's encoder as the plain ``state_dict`` of the network its backbone wraps.

    Same contract as :func:`ssltk.engine.embed.export_encoder` (the backbone's own
    :meth:`~ssltk.interfaces.Backbone.export_state_dict`); the linear head is left out (it is
    ``model.json``'s ``head``: ``weights.pt`` holds it, or the probe's arrays).
    """
    path = Path(path)
    meta = read_model_json(path)
    state, _ = load_checkpoint(path / meta.get("weights", WEIGHTS))
    name = meta["backbone"].get("name")
    try:
        backbone = (registry or get_registry()).get("backbones", str(name))
    except SsltkError as exc:
        raise SsltkError(f"{path} holds backbone '{name}': {exc}") from None
    plain = backbone.export_state_dict(state["backbone"])
    if plain is None:
        raise SsltkError(f"{path} holds backbone '{name}', which wraps no other framework's "
                         "network, so there is nothing to export")
    torch.save(plain, out)
    return Path(out)
