"""SimCLRv2 distillation: the loss against a hand computation, the pool guard, and a student
that learns its teacher's labels on a synthetic cohort."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssltk.engine import distillation
from ssltk.engine.distillation import DistillRun, check_pool, distill, distillation_loss
from ssltk.engine.finetuning import FinetuneRun, finetune
from ssltk.errors import SsltkError
from ssltk.specs import ComponentSpec

BACKBONE = {"name": "resnet10", "widen_factor": 0.125, "stem_kernel": 3, "stem_stride": 1,
            "max_pool": False, "norm": "group"}
TEACHER_LOGITS = [[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]]
STUDENT_LOGITS = [[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]]


def _softmax(row: list[float], tau: float) -> list[float]:
    exps = [math.exp(v / tau) for v in row]
    return [e / sum(exps) for e in exps]


def _hand_loss(student: list[list[float]], teacher: list[list[float]], tau: float) -> float:
    """-(1/B) sum_x sum_y p_T(y|x; tau) log p_S(y|x; tau), with plain loops (SimCLRv2 eq. 2)."""
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        p_t, p_s = _softmax(t_row, tau), _softmax(s_row, tau)
        for y in range(len(s_row)):
            total -= p_t[y] * math.log(p_s[y])
    return total / len(student)


@pytest.mark.numerics
@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0, 4.0])
def test_the_loss_is_simclrv2_eq2_without_tau_squared(tau):
    loss = distillation_loss(torch.tensor(STUDENT_LOGITS, dtype=torch.float64),
                             torch.tensor(TEACHER_LOGITS, dtype=torch.float64), tau)
    assert float(loss) == pytest.approx(_hand_loss(STUDENT_LOGITS, TEACHER_LOGITS, tau),
                                        rel=1e-12)


@pytest.mark.numerics
def test_the_values_by_hand_at_tau_2():
    # tau = 2, first row: p_T = softmax([1, -0.5, 0.25]) = [0.58980, 0.13160, 0.27860],
    # log p_S = log softmax([0.5, 0, -0.5]) = [-0.68027, -1.18027, -1.68027]; second row:
    # p_T = softmax([0, 1.5, -1]) = [0.17095, 0.76616, 0.06289],
    # log p_S = log softmax([0.25, 0.25, 1]) = [-1.41512, -1.41512, -0.66512].
    row1 = -(0.58980 * -0.68027 + 0.13160 * -1.18027 + 0.27860 * -1.68027)
    row2 = -(0.17095 * -1.41512 + 0.76616 * -1.41512 + 0.06289 * -0.66512)
    loss = distillation_loss(torch.tensor(STUDENT_LOGITS), torch.tensor(TEACHER_LOGITS), 2.0)
    assert float(loss) == pytest.approx((row1 + row2) / 2, abs=2e-4)
    # Hinton et al.'s tau^2 would make it 4x larger: ssltk follows SimCLRv2
    assert float(loss) < 0.5 * 4 * (row1 + row2) / 2


@pytest.mark.numerics
def test_the_student_gradient_vanishes_at_the_teacher_and_none_reaches_the_teacher():
    teacher = torch.tensor(TEACHER_LOGITS, requires_grad=True)
    student = torch.tensor(TEACHER_LOGITS, requires_grad=True)
    distillation_loss(student, teacher, 3.0).backward()
    assert student.grad.abs().max() < 1e-6  # cross-entropy is minimal at p_S = p_T
    assert teacher.grad is None


def _run(**rows) -> DistillRun:
    base = {"store": "x.h5", "target": "diagnosis", "student": ComponentSpec(name="resnet10"),
            "pool_rows": [0, 1, 2, 3], "train_rows": [0, 1], "val_rows": [4], "test_rows": [5]}
    return DistillRun(**(base | rows))


def test_the_pool_may_not_hold_a_test_or_validation_row():
    check_pool(_run())
    with pytest.raises(SsltkError, match="pool holds 1 test row"):
        check_pool(_run(pool_rows=[0, 1, 2, 5]))
    with pytest.raises(SsltkError, match="pool holds 1 validation row"):
        check_pool(_run(pool_rows=[0, 1, 4]))
    with pytest.raises(SsltkError, match="misses labelled training rows"):
        check_pool(_run(pool_rows=[1, 2, 3]))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, make_tiny_store):
    """40 synthetic subjects (AD: a dark band) split like a benchmark: 24 pool, 8 val, 8 test;
    the budget labels 4 of the pool; a teacher fully finetuned on them, kept as a bundle."""
    folder = tmp_path_factory.mktemp("distill")
    store = make_tiny_store(folder / "tiny.h5", (1, 16, 16, 16), n=40)
    rows = np.random.default_rng(0).permutation(40).tolist()
    test, val, pool = sorted(rows[:8]), sorted(rows[8:16]), sorted(rows[16:])
    train = sorted([r for r in pool if r % 2][:3] + [r for r in pool if not r % 2][:3])
    teacher = FinetuneRun(store=store, target="diagnosis", classes=["CN", "AD"],
                          backbone=BACKBONE, mode="full", train_rows=train, val_rows=val,
                          test_rows=test, epochs=6, lr=3e-3, encoder_lr_ratio=1.0,
                          batch_size=6, patience=6)
    finetune(teacher, save_model=folder / "teacher")
    return {"store": store, "pool": pool, "train": train, "val": val, "test": test,
            "teacher": folder / "teacher"}


@pytest.mark.numerics
def test_the_student_agrees_with_its_teacher_on_the_pool_and_never_sees_the_test_set(
        cohort, monkeypatch):
    seen = {"teacher": [], "student": []}
    logits_of, train_epochs = distillation.logits_of, distillation.train_epochs

    def spy_logits(model, reader, rows, *args):
        if type(model).__name__ == "BundleModel":  # the teacher
            seen["teacher"] += list(rows)
        return logits_of(model, reader, rows, *args)

    def spy_train(model, optimizer, batch_loss, rows, *args):
        seen["student"] += list(rows)
        return train_epochs(model, optimizer, batch_loss, rows, *args)

    monkeypatch.setattr(distillation, "logits_of", spy_logits)
    monkeypatch.setattr(distillation, "train_epochs", spy_train)
    run = DistillRun(store=cohort["store"], target="diagnosis", classes=["CN", "AD"],
                     student=ComponentSpec(**BACKBONE), pool_rows=cohort["pool"],
                     train_rows=cohort["train"], val_rows=cohort["val"],
                     test_rows=cohort["test"], temperature=2.0, epochs=6, lr=3e-3,
                     batch_size=6)
    result = distill(run, cohort["teacher"])
    assert set(seen["teacher"]) == set(seen["student"]) == set(cohort["pool"])
    assert not set(seen["teacher"]) & set(cohort["test"] + cohort["val"])
    teacher = distillation.load_bundle(cohort["teacher"])
    from ssltk.data.loading import BatchReader

    x, _ = BatchReader(cohort["store"]).read(np.asarray(cohort["pool"]))
    with torch.no_grad():
        votes = teacher.model(x).argmax(-1)
    assert 0.2 <= float(votes.float().mean()) <= 0.8  # the teacher is no constant
    assert result.pool_agreement >= 0.8, result.pool_agreement
    assert result.metrics["roc_auc"] > 0.5 and len(result.predictions["rows"]) == 8
    assert result.predictions["rows"] == cohort["test"]


@pytest.mark.numerics
def test_label_weight_mixes_in_the_cross_entropy_of_the_labelled_rows_only():
    from types import SimpleNamespace

    # pool rows 10, 11; only row 11 is labelled (class 2)
    run = SimpleNamespace(pool_rows=[10, 11], train_rows=[11], label_weight=0.25,
                          temperature=2.0)
    targets = SimpleNamespace(values=lambda rows: np.array([2] * len(rows)))
    ctx = SimpleNamespace(device="cpu")
    teacher = torch.tensor(TEACHER_LOGITS, dtype=torch.float64)
    student = torch.tensor(STUDENT_LOGITS, dtype=torch.float64)
    loss = distillation._batch_loss(run, targets, teacher, ctx)(student, np.array([10, 11]))
    ce = -math.log(_softmax(STUDENT_LOGITS[1], 1.0)[2])  # row 11, label 2, tau = 1
    expected = 0.75 * _hand_loss(STUDENT_LOGITS, TEACHER_LOGITS, 2.0) + 0.25 * ce
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    unlabelled = distillation._batch_loss(run, targets, teacher, ctx)(student[:1],
                                                                        np.array([10]))
    assert float(unlabelled) == pytest.approx(
        0.75 * _hand_loss(STUDENT_LOGITS[:1], TEACHER_LOGITS[:1], 2.0), rel=1e-12)
