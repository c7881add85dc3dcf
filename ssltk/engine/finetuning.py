"""Finetuning a (pretrained or scratch) encoder on a labelled task, and evaluating it.

Two modes:

* ``frozen`` – linear probe. Embeddings of every needed row are extracted once (eval mode, no
  augmentation) and a scikit-learn model is fitted on them: logistic regression
  (classification) or ridge regression, its regularisation chosen on the validation rows.
  This is orders of magnitude cheaper than training a linear layer on the frozen encoder
  epoch after epoch, and is the protocol of the y-Aware paper's linear evaluation. With
  ``features = "raw_input"`` the "embeddings" are the input volume average-pooled to at most
  4096 values (:class:`~ssltk.engine.baselines.RawInput`): the raw-input baseline.
* ``full`` – the encoder and a linear head trained end to end, the encoder at
  ``lr * encoder_lr_ratio``, with early stopping on the validation metric (patience) and the
  best weights restored before testing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ssltk.augment import Pipeline
from ssltk.data.loading import BatchReader, epoch_batches
from ssltk.engine import runtime
from ssltk.engine.baselines import RawInput
from ssltk.engine.checkpoint import check_compatible, load_checkpoint
from ssltk.engine.metrics import classification_metrics, regression_metrics
from ssltk.engine.runs import FinetuneRun
from ssltk.engine.targets import Targets, load_targets
from ssltk.errors import SsltkError
from ssltk.interfaces import Backbone
from ssltk.registry import Registry, get_registry
from ssltk.specs import ComponentSpec
from ssltk.store import VolumeStore

__all__ = ["Classifier", "EmbeddingCache", "FinetuneResult", "FinetuneRun", "embed_rows",
           "finetune", "forward_rows", "load_encoder", "load_encoder_state", "logits_of",
           "result_of", "train_epochs", "val_loss_of", "val_score_of"]
log = logging.getLogger(__name__)
PROBE_C = (0.001, 0.01, 0.1, 1.0, 10.0)
"""Inverse regularisation strengths tried by the frozen probe (picked on validation)."""


@dataclass
class FinetuneResult:
    metrics: dict
    predictions: dict
    best_epoch: int | None = None
    history: list[dict] = field(default_factory=list)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)))


def load_encoder(spec: ComponentSpec, encoder: str | Path | None, in_channels: int,
                 spatial_dims: int, registry: Registry) -> Backbone:
    """Backbone ``spec``, with the weights of ``encoder`` (a pretraining's encoder.pt) if given."""
    backbone = registry.build("backbones", spec, "backbone", in_channels=in_channels,
                              spatial_dims=spatial_dims)
    if encoder is None:
        return backbone
    state, meta = load_encoder_state(encoder)
    check_compatible(meta, {"backbone": spec.name}, source=str(encoder),
                     fix="set backbone.name to the backbone it was pretrained with")
    try:
        backbone.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise SsltkError(f"{encoder} does not fit backbone '{spec.name}' with these "
                         f"parameters ({first}); use the backbone parameters of pretraining") \
            from None
    return backbone


def load_encoder_state(encoder: str | Path) -> tuple[dict[str, Tensor], dict]:
    """``(backbone state_dict, meta)`` of a pretraining's ``encoder.pt``."""
    state, meta = load_checkpoint(encoder)
    if "backbone" not in state:
        raise SsltkError(f"{encoder} holds no encoder weights; pass the encoder.pt "
                         "written by pretraining")
    return state["backbone"], meta


def finetune(run: FinetuneRun, *, registry: Registry | None = None, device: str = "auto",
             progress: bool = False, save_model: str | Path | None = None,
             model_info: dict | None = None,
             embeddings: EmbeddingCache | None = None) -> FinetuneResult:
    """Finetune and evaluate; returns test metrics and per-row predictions.

    Args:
        save_model: also write the trained model as a bundle folder there
            (:mod:`ssltk.engine.bundle`); ``model_info`` adds facts to its model.json.
        embeddings: frozen mode: take the encoder's embeddings from this cache, shared with
            the other frozen cells of the same encoder (computed once for every labelled row).
    """
    registry = registry or get_registry()
    if save_model is not None:
        from ssltk.engine.bundle import check_target

        check_target(save_model)  # before training, not after
    ctx = runtime.Context(runtime.resolve_device(device))
    store = VolumeStore.open(run.store)
    targets = load_targets(store, run.target, run.task, run.classes, source=str(run.store))
    for name, rows in (("train", run.train_rows), ("val", run.val_rows), ("test", run.test_rows)):
        targets.check_rows(rows, name)
    runtime.seed_everything(run.seed)
    if run.features == "raw_input":
        if save_model is not None:
            raise SsltkError("a raw-input probe has no encoder to save as a bundle; "
                             "run it without save_model")
        backbone = RawInput(store.shape).to(ctx.device)
    else:
        backbone = load_encoder(run.backbone, run.encoder, store.shape[0], store.spatial_dims,
                                registry).to(ctx.device)
    reader = BatchReader(store)
    if run.mode == "frozen":
        result, head = _probe(run, backbone, reader, targets, ctx, embeddings)
    else:
        result, head = _train_full(run, backbone, reader, targets, ctx, registry, progress)
    if save_model is not None:
        from ssltk.engine.bundle import save_bundle

        save_bundle(save_model, run=run, backbone=backbone, store=store,
                    classes=targets.classes, metrics=result.metrics,
                    val_score=best_val_score(result), info=model_info,
                    **({"probe": head, "head": None} if run.mode == "frozen"
                       else {"probe": None, "head": head}))
    return result


def best_val_score(result: FinetuneResult) -> float | None:
    """The best validation score of training (ROC-AUC, balanced accuracy or -MAE)."""
    scores = [h["val_score"] for h in result.history if np.isfinite(h.get("val_score", np.nan))]
    return float(max(scores)) if scores else None


# -- frozen: embeddings + scikit-learn ---------------------------------------------------------
@torch.no_grad()
def embed_rows(backbone: Backbone, reader: BatchReader, rows, ctx: runtime.Context,
               batch_size: int = 8, precision: str = "auto") -> np.ndarray:
    """``rows`` -> ``(len(rows), out_dim)`` float32 embeddings (eval mode, no augmentation)."""
    backbone.eval()
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), backbone.out_dim), dtype=np.float32)
    for i in range(0, len(rows), batch_size):
        x, _ = reader.read(rows[i:i + batch_size])
        with runtime.autocast(precision, ctx):
            out[i:i + len(x)] = backbone(x.to(ctx.device)).float().cpu().numpy()
    return out


class EmbeddingCache:
    """Frozen embeddings of one encoder, shared by the linear-probe cells that evaluate it.

    A probe needs only the encoder's embeddings (eval mode, no augmentation), and every cell of
    one encoder (label budgets x split repeats) draws its rows from the same labelled cohort.
    On first use the cache embeds every labelled row of the store, in row order and batches of
    the run's ``batch_size``; a cell then gets the same numbers whichever cells ran before it,
    so a resumed run equals an uninterrupted one. A run with another encoder (for the random
    init: another seed), store, target, backbone, batch size or precision replaces the table.
    """

    def __init__(self) -> None:
        self._key: str | None = None
        self._position: dict[int, int] = {}
        self._table = np.empty((0, 0), dtype=np.float32)

    @staticmethod
    def key(run: FinetuneRun) -> str:
        # without an encoder file the weights are the random init of the run's seed: the
        # scratch cells of every seed share one group, and each seed is another encoder
        fields = {"encoder", "store", "target", "task", "classes", "backbone", "batch_size",
                  "precision", "features"} | ({"seed"} if run.encoder is None else set())
        return run.model_dump_json(include=fields)

    def lookup(self, run: FinetuneRun, backbone: Backbone, reader: BatchReader,
               targets: Targets, ctx: runtime.Context, rows) -> np.ndarray:
        """``(len(rows), out_dim)`` embeddings of ``rows`` (labelled rows of ``run.store``)."""
        key = self.key(run)
        if key != self._key:
            labelled = np.sort(targets.labelled_rows())
            self._table = embed_rows(backbone, reader, labelled, ctx, run.batch_size,
                                     run.precision)
            self._position = {int(r): i for i, r in enumerate(labelled)}
            self._key = key
        return self._table[[self._position[int(r)] for r in rows]]


def _probe(run: FinetuneRun, backbone: Backbone, reader: BatchReader, targets: Targets,
           ctx: runtime.Context, cache: EmbeddingCache | None = None
           ) -> tuple[FinetuneResult, dict]:
    """The result, and the chosen probe as plain arrays (for a bundle)."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ssltk.engine.bundle import probe_arrays

    sides = (("train", run.train_rows), ("val", run.val_rows), ("test", run.test_rows))
    if cache is None:
        emb = {name: embed_rows(backbone, reader, rows, ctx, run.batch_size, run.precision)
               for name, rows in sides}
    else:
        emb = {name: cache.lookup(run, backbone, reader, targets, ctx, rows)
               for name, rows in sides}
    y = {name: targets.values(rows) for name, rows in (("train", run.train_rows),
                                                         ("val", run.val_rows),
                                                         ("test", run.test_rows))}
    best, history = None, []
    for c in PROBE_C:
        if run.task == "classification":
            est = LogisticRegression(C=c, max_iter=2000,
                                     class_weight="balanced" if run.class_weighting else None)
        else:
            est = Ridge(alpha=1.0 / c)
        model = make_pipeline(StandardScaler(), est).fit(emb["train"], y["train"])
        score = val_score_of(run, targets, y["val"], _predict(run, model, emb["val"], targets))
        history.append({"C": c, "val_score": score})
        if best is None or score > best[0]:
            best = (score, model)
    test_out = _predict(run, best[1], emb["test"], targets)
    return (result_of(run, targets, y["test"], test_out, None, history),
            probe_arrays(best[1], run.task))


def _predict(run: FinetuneRun, model, x: np.ndarray, targets: Targets) -> np.ndarray:
    if run.task == "regression":
        return model.predict(x)
    proba = np.zeros((len(x), targets.n_classes))
    proba[:, model.classes_] = model.predict_proba(x)  # classes absent from train get 0
    return proba


def val_score_of(run: FinetuneRun, targets: Targets, y: np.ndarray, out: np.ndarray) -> float:
    """Validation score, higher is better: ROC-AUC (balanced accuracy if undefined), -MAE."""
    if run.task == "regression":
        return -float(np.mean(np.abs(out - y)))
    m = classification_metrics(y, out, targets.classes)
    auc = m.get("roc_auc", float("nan"))
    return m["balanced_accuracy"] if not np.isfinite(auc) else float(auc)


def val_loss_of(run, targets: Targets, y: np.ndarray, out: np.ndarray) -> float:
    """Validation loss, lower is better: log loss, or MAE (regression). It breaks ties in the
    score: ROC-AUC reaches 1.0 on a small validation set while the model is still barely
    trained (all its probabilities near 0.5, only ranked right)."""
    if run.task == "regression":
        return float(np.mean(np.abs(out - y)))
    return classification_metrics(y, out, targets.classes)["test_loss"]


def result_of(run: FinetuneRun, targets: Targets, y: np.ndarray, out: np.ndarray,
            best_epoch: int | None, history: list[dict]) -> FinetuneResult:
    if run.task == "regression":
        metrics = regression_metrics(y, out)
        train = targets.values(run.train_rows).astype(np.float64)
        # the report's mean-predictor baseline and its out-of-range warning read these
        preds = {"rows": list(run.test_rows), "y_true": y.tolist(), "y_pred": out.tolist(),
                 "train_target": {"mean": float(train.mean()), "min": float(train.min()),
                                  "max": float(train.max())}}
    else:
        metrics = classification_metrics(y, out, targets.classes)
        preds = {"rows": list(run.test_rows), "y_true": y.tolist(), "proba": out.tolist(),
                 "classes": targets.classes}
    return FinetuneResult(metrics, preds, best_epoch, history)


# -- full finetuning ---------------------------------------------------------------------------
class Classifier(nn.Module):
    """An encoder and a linear head: ``(B, C, *spatial) -> (B, n_out)`` logits (or values)."""

    def __init__(self, backbone: Backbone, n_out: int):
        super().__init__()
        self.backbone, self.head = backbone, nn.Linear(backbone.out_dim, n_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


BatchLoss = Callable[[Tensor, np.ndarray], Tensor]
"""``loss(out, rows)``: the loss of a batch from the model's ``(B, n_out)`` float output and
the batch's store rows ``(B,)`` (which say where its targets are)."""


def _train_full(run: FinetuneRun, backbone: Backbone, reader: BatchReader, targets: Targets,
                ctx: runtime.Context, registry: Registry,
                progress: bool) -> tuple[FinetuneResult, dict]:
    """The result, and the head's state (outputting the value itself for regression)."""
    n_out = targets.n_classes if run.task == "classification" else 1
    model = Classifier(backbone, n_out).to(ctx.device)
    optimizer = torch.optim.AdamW(
        [{"params": model.backbone.parameters(), "lr": run.lr * run.encoder_lr_ratio},
         {"params": model.head.parameters(), "lr": run.lr}], weight_decay=run.weight_decay)
    loss_fn = _loss_fn(run, targets, ctx)
    y_train = torch.as_tensor(targets.values(run.train_rows))
    row_pos = {r: i for i, r in enumerate(run.train_rows)}

    def batch_loss(out: Tensor, rows: np.ndarray) -> Tensor:
        return loss_fn(out, y_train[[row_pos[r] for r in rows]].to(ctx.device))

    best_epoch, history = train_epochs(model, optimizer, batch_loss, run.train_rows, run,
                                       reader, targets, ctx, registry, progress,
                                       f"finetune {run.mode}")
    test_out = forward_rows(model, reader, run.test_rows, run, targets, ctx)
    result = result_of(run, targets, targets.values(run.test_rows), test_out, best_epoch,
                         history)
    return result, _head_state(model.head, run, targets)


def train_epochs(model: Classifier, optimizer: torch.optim.Optimizer, batch_loss: BatchLoss,
                 rows, run, reader: BatchReader, targets: Targets, ctx: runtime.Context,
                 registry: Registry, progress: bool, label: str) -> tuple[int, list[dict]]:
    """Train ``model`` on ``rows`` for ``run.epochs`` epochs with early stopping on the
    validation score of ``run.val_rows`` (``run.patience`` stale epochs; of two epochs with
    the same score the one with the lower validation loss is better), then restore the best
    epoch's weights; ``run.patience = None`` trains every epoch and keeps the last.
    Shared by full finetuning and distillation (:mod:`ssltk.engine.distillation`), whose runs
    both carry ``epochs``, ``batch_size``, ``seed``, ``patience``, ``precision``,
    ``augmentations``, ``task`` and the row lists.

    Returns:
        ``(best epoch, history)``: one ``{"epoch", "train_loss", "val_score", "val_loss"}``
        per epoch.
    """
    pipeline = Pipeline.from_specs(registry, run.augmentations, path="augmentations")
    best, history, stale = None, [], 0
    bar = runtime.ProgressBar(run.epochs, label, enabled=progress)
    with bar:
        for epoch in range(run.epochs):
            model.train()
            losses = []
            for step, batch in enumerate(epoch_batches(rows, run.batch_size, run.seed, epoch,
                                                       drop_last=len(rows) > run.batch_size)):
                x, _ = reader.read(batch)
                gen = runtime.step_generator(run.seed, epoch * 100_000 + step)
                x = pipeline(x.to(ctx.device), gen) if len(pipeline) else x.to(ctx.device)
                with runtime.autocast(run.precision, ctx):
                    out = model(x)
                loss = batch_loss(out.float(), batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            val_out = forward_rows(model, reader, run.val_rows, run, targets, ctx)
            y_val = targets.values(run.val_rows)
            score = val_score_of(run, targets, y_val, val_out)
            rank = (score, -val_loss_of(run, targets, y_val, val_out))  # ties: lower loss
            history.append({"epoch": epoch, "train_loss": float(np.mean(losses)),
                            "val_score": score, "val_loss": -rank[1]})
            bar.update_plain()
            if run.patience is None:  # a fixed schedule: the last epoch's weights
                best = (rank, epoch, None)
            elif best is None or rank > best[0]:
                best, stale = (rank, epoch, _copy_state(model)), 0
            else:
                stale += 1
                if stale >= run.patience:
                    break
    if best[2] is not None:
        model.load_state_dict(best[2])
    return best[1], history


def _head_state(head: nn.Linear, run: FinetuneRun, targets: Targets) -> dict[str, Tensor]:
    if run.task == "regression":
        from ssltk.engine.bundle import fold_standardisation

        return fold_standardisation(head, *targets.standardisation(run.train_rows))
    return {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}


def _loss_fn(run: FinetuneRun, targets: Targets, ctx: runtime.Context):
    if run.task == "regression":
        mean, std = targets.standardisation(run.train_rows)
        return lambda out, y: nn.functional.mse_loss(out[:, 0], (y.float() - mean) / std)
    weight = None
    if run.class_weighting:
        weight = torch.as_tensor(targets.class_weights(run.train_rows), dtype=torch.float32,
                                 device=ctx.device)
    return nn.CrossEntropyLoss(weight=weight)


@torch.no_grad()
def logits_of(model: nn.Module, reader: BatchReader, rows, batch_size: int, precision: str,
              ctx: runtime.Context) -> Tensor:
    """``rows`` -> the model's raw ``(len(rows), n_out)`` float32 outputs on the CPU (eval
    mode, no augmentation)."""
    model.eval()
    rows = np.asarray(rows, dtype=np.int64)
    outs = []
    for i in range(0, len(rows), batch_size):
        x, _ = reader.read(rows[i:i + batch_size])
        with runtime.autocast(precision, ctx):
            outs.append(model(x.to(ctx.device)).float().cpu())
    return torch.cat(outs)


def forward_rows(model: nn.Module, reader: BatchReader, rows, run: FinetuneRun,
                 targets: Targets, ctx: runtime.Context) -> np.ndarray:
    """Class probabilities ``(N, K)``, or predicted values ``(N,)`` (regression)."""
    out = logits_of(model, reader, rows, run.batch_size, run.precision, ctx)
    if run.task == "regression":
        mean, std = targets.standardisation(run.train_rows)
        return (out[:, 0] * std + mean).numpy()
    return out.softmax(-1).numpy()


def _copy_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
