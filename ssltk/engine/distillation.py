"""Distillation with unlabelled examples: the third stage of SimCLRv2.

Chen, Kornblith, Swersky, Norouzi, Hinton, "Big Self-Supervised Models are Strong
Semi-Supervised Learners", NeurIPS 2020, section 2 (eq. 2). A finetuned model, the *teacher*,
labels every image of the task's training pool with temperature-scaled soft targets
``p_T(y|x; tau) = softmax(z_T(x) / tau)``, labels hidden; a *student* (a fresh network, of the
teacher's architecture or a smaller one) is trained to match them:

    L = - sum_x sum_y p_T(y|x; tau) log p_S(y|x; tau)

No ``tau^2`` factor: that is Hinton, Vinyals & Dean (2015)'s scaling, which keeps the soft
term's gradients comparable to a hard-label term at ``tau = 1``; SimCLRv2 trains on the
distillation loss alone when labels are few, and so does ssltk by default
(``label_weight = 0``). With ``label_weight = w > 0`` the loss is ``(1 - w) L + w CE`` (CE on
the budget's labelled rows of the batch, at temperature 1).

The student is trained with the loop of full finetuning (:func:`~ssltk.engine.finetuning.
train_epochs`: same batches, augmentations, precision and early stopping on the validation
rows), and evaluated on the test rows with the same metrics. The pool never holds a validation
or a test row: :func:`check_pool` refuses such a run.

>>> result = distill(run, teacher="runs/x/distill/teachers/<cell>")  # a model bundle
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ssltk.data.loading import BatchReader
from ssltk.engine import runtime
from ssltk.engine.bundle import load_bundle
from ssltk.engine.finetuning import (Classifier, FinetuneResult, load_encoder, logits_of,
                                     result_of, train_epochs)
from ssltk.engine.runs import DistillRun
from ssltk.engine.targets import Targets, load_targets
from ssltk.errors import SsltkError
from ssltk.registry import Registry, get_registry
from ssltk.store import VolumeStore

__all__ = ["DistillResult", "check_pool", "distill", "distillation_loss"]


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor,
                      temperature: float) -> Tensor:
    """SimCLRv2's distillation loss (eq. 2), averaged over the batch.

    Args:
        student_logits: ``(B, K)`` logits of the student.
        teacher_logits: ``(B, K)`` logits of the teacher (no gradient flows into them).
        temperature: ``tau`` of both softmaxes.

    Returns:
        ``-(1/B) sum_x sum_y softmax(z_T/tau)_y log softmax(z_S/tau)_y`` (a scalar; no
        ``tau^2`` factor).
    """
    p_teacher = (teacher_logits.detach() / temperature).softmax(-1)
    log_p_student = (student_logits / temperature).log_softmax(-1)
    return -(p_teacher * log_p_student).sum(-1).mean()


@dataclass
class DistillResult(FinetuneResult):
    """A finetuning-like result of the student, plus how often it agrees with its teacher."""

    pool_agreement: float = float("nan")
    """Fraction of pool rows where the student's argmax is the teacher's."""


def check_pool(run: DistillRun) -> None:
    """The pool holds no validation or test row, and holds the budget's labelled rows.

    Raises:
        SsltkError: a validation or test row is in the pool (the test set would be seen).
    """
    pool = set(run.pool_rows)
    for name, rows in (("test", run.test_rows), ("validation", run.val_rows)):
        leaked = sorted(pool.intersection(rows))
        if leaked:
            raise SsltkError(f"distillation pool holds {len(leaked)} {name} row(s) (e.g. row "
                             f"{leaked[0]}); the pool must be the training pool only")
    if not pool.issuperset(run.train_rows):
        raise SsltkError("distillation pool misses labelled training rows; pass the pool the "
                         "budget was drawn from")


def distill(run: DistillRun, teacher: str | Path, *, registry: Registry | None = None,
            device: str = "auto", progress: bool = False) -> DistillResult:
    """Label ``run.pool_rows`` with ``teacher`` (a model bundle), train a student on the soft
    targets, evaluate it on ``run.test_rows``."""
    registry = registry or get_registry()
    check_pool(run)
    ctx = runtime.Context(runtime.resolve_device(device))
    store = VolumeStore.open(run.store)
    targets = load_targets(store, run.target, run.task, run.classes, source=str(run.store))
    for name, rows in (("train", run.train_rows), ("val", run.val_rows), ("test", run.test_rows)):
        targets.check_rows(rows, name)
    reader = BatchReader(store)
    bundle = load_bundle(teacher, registry, device=ctx.device)
    if bundle.classes != targets.classes:
        raise SsltkError(f"teacher {teacher} predicts classes {bundle.classes}, the task has "
                         f"{targets.classes}; use a teacher finetuned on this task")
    z_teacher = logits_of(bundle.model, reader, run.pool_rows, run.batch_size, run.precision,
                          ctx)  # (P, K), once: the teacher is fixed and sees no augmentation
    runtime.seed_everything(run.seed)
    backbone = load_encoder(run.student, run.encoder, store.shape[0], store.spatial_dims,
                            registry)
    model = Classifier(backbone, targets.n_classes).to(ctx.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.lr, weight_decay=run.weight_decay)
    batch_loss = _batch_loss(run, targets, z_teacher, ctx)
    best_epoch, history = train_epochs(model, optimizer, batch_loss, run.pool_rows, run, reader,
                                       targets, ctx, registry, progress, "distill")
    test_out = logits_of(model, reader, run.test_rows, run.batch_size, run.precision, ctx)
    result = result_of(run, targets, targets.values(run.test_rows),
                       test_out.softmax(-1).numpy(), best_epoch, history)
    z_student = logits_of(model, reader, run.pool_rows, run.batch_size, run.precision, ctx)
    agreement = float((z_student.argmax(-1) == z_teacher.argmax(-1)).float().mean())
    return DistillResult(**vars(result), pool_agreement=agreement)


def _batch_loss(run: DistillRun, targets: Targets, z_teacher: Tensor, ctx: runtime.Context):
    """``loss(out, rows)`` of a batch of pool rows: distillation, plus CE on labelled rows."""
    pos = {r: i for i, r in enumerate(run.pool_rows)}
    labels = dict(zip(run.train_rows, targets.values(run.train_rows).tolist()))
    w = run.label_weight

    def loss(out: Tensor, rows: np.ndarray) -> Tensor:
        soft = distillation_loss(out, z_teacher[[pos[r] for r in rows]].to(ctx.device),
                                 run.temperature)
        if w == 0:
            return soft
        known = [i for i, r in enumerate(rows) if r in labels]
        if not known:
            return (1 - w) * soft
        y = torch.as_tensor([labels[rows[i]] for i in known], device=ctx.device)
        return (1 - w) * soft + w * nn.functional.cross_entropy(out[known], y)

    return loss
