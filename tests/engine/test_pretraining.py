"""Pretraining end to end: every objective in 2D and 3D, resume, kill -9, NaN, bad input."""

from __future__ import annotations

import os
import signal
import sys
import textwrap

import pytest
import torch
from _handshake import CHILD, Handshake
from _objectives import nan_after_two

from ssltk.engine import FinetuneRun, PretrainRun, finetune, pretrain
from ssltk.engine.checkpoint import load_checkpoint
from ssltk.engine.pretraining import NonFiniteLossError
from ssltk.errors import SsltkError
from ssltk.registry import get_registry

pytestmark = pytest.mark.numerics

BACKBONE = {"name": "resnet10", "widen_factor": 0.25, "norm": "group"}
LIGHT_AUG = [{"name": "flip", "p": 0.5}, {"name": "gaussian_noise", "p": 1.0}]


def make_run(store, objective="simclr", **kw) -> PretrainRun:
    spec = {"name": objective} if isinstance(objective, str) else objective
    defaults = dict(store=store, backbone=BACKBONE, objective=spec, augmentations=LIGHT_AUG,
                    epochs=1, batch_size=4, seed=0)
    return PretrainRun(**{**defaults, **kw})


def encoder_weights(path):
    return load_checkpoint(path)[0]["backbone"]


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("objective", get_registry().names("objectives"))
def test_every_objective_pretrains_then_finetunes(objective, dims, store2d, store3d, tmp_path):
    store = store3d if dims == 3 else store2d
    result = pretrain(make_run(store, objective), tmp_path / "pt", registry=get_registry())
    assert result.encoder_path.exists() and [h["epoch"] for h in result.history] == [-1, 0]
    assert torch.isfinite(torch.tensor(result.history[-1]["loss"]))  # -1: the monitors at init
    ft = finetune(FinetuneRun(store=store, target="diagnosis", classes=["CN", "AD"],
                              backbone=BACKBONE, encoder=result.encoder_path, mode="frozen",
                              train_rows=list(range(8)), val_rows=[8, 9, 10, 11],
                              test_rows=[12, 13, 14, 15]))
    assert 0.0 <= ft.metrics["roc_auc"] <= 1.0 and len(ft.predictions["proba"]) == 4


def test_same_seed_same_weights_and_a_finished_run_is_reused(store3d, tmp_path):
    run = make_run(store3d, epochs=2)
    a = pretrain(run, tmp_path / "a")
    b = pretrain(run, tmp_path / "b")
    for k, v in encoder_weights(a.encoder_path).items():
        assert torch.equal(v, encoder_weights(b.encoder_path)[k]), k
    again = pretrain(run, tmp_path / "a")
    assert again.cached and again.history == a.history
    other = make_run(store3d, epochs=2, seed=1)
    with pytest.raises(SsltkError, match="another configuration"):
        pretrain(other, tmp_path / "a")


KILLABLE = CHILD + textwrap.dedent("""
    import sys
    from ssltk.engine import PretrainRun, pretrain
    from ssltk.engine import pretraining
    run = PretrainRun.model_validate_json(sys.argv[1])
    step = pretraining._Trainer._train_step
    def held_step(self, rows):  # step 6 is done in memory; its checkpoint is not written yet
        step(self, rows)
        if self.step == 6:
            hold_here()
    pretraining._Trainer._train_step = held_step
    pretrain(run, sys.argv[2], checkpoint_every=1)
""")


@pytest.mark.slow  # a child process; test_two_step.py keeps a resume in the fast suite
def test_kill_9_then_resume_gives_the_weights_of_an_uninterrupted_run(store3d, tmp_path):
    run = make_run(store3d, objective="moco", epochs=3)  # moco: queue + momentum state too
    out = tmp_path / "killed"
    handshake = Handshake()
    proc = handshake.popen([sys.executable, "-c", KILLABLE, run.model_dump_json(), str(out)])
    try:
        handshake.wait(proc)  # mid-way through epoch 2 of 3 (4 steps per epoch)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "encoder.pt").exists()
    assert load_checkpoint(out / "checkpoint.pt")[1]["step"] == 5  # step 6 is lost, redone
    resumed = pretrain(run, out)
    reference = pretrain(run, tmp_path / "reference")
    ref = encoder_weights(reference.encoder_path)
    for k, v in encoder_weights(resumed.encoder_path).items():
        assert torch.equal(v, ref[k]), k
    assert [h["epoch"] for h in resumed.history] == [-1, 0, 1, 2]


_NaNAfterTwo = nan_after_two("nan_after_two")


def test_a_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(store3d, tmp_path):
    registry = get_registry()
    registry.add("objectives", _NaNAfterTwo)
    # no monitors: their forward at random init would count as one of the objective's calls
    run = make_run(store3d, "nan_after_two", epochs=2, monitor={"enabled": False})
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 2 \(epoch 0\)"):
        pretrain(run, tmp_path / "nan", registry=registry, checkpoint_every=1)
    _, meta = load_checkpoint(tmp_path / "nan" / "checkpoint.pt")
    assert meta["step"] == 2


def test_missing_column_is_reported_before_training(store3d, tmp_path):
    spec = {"name": "yaware", "anchor": {"name": "rbf", "columns": ["bmi"], "sigma": 1.0}}
    with pytest.raises(SsltkError, match="has no column 'bmi'"):
        pretrain(make_run(store3d, spec), tmp_path / "x")
    assert not (tmp_path / "x" / "checkpoint.pt").exists()


def test_encoder_of_another_backbone_or_corrupted_is_refused(store3d, tmp_path):
    result = pretrain(make_run(store3d), tmp_path / "pt")
    kw = dict(store=store3d, target="diagnosis", train_rows=list(range(8)),
              val_rows=[8, 9, 10, 11], test_rows=[12, 13, 14, 15])
    with pytest.raises(SsltkError, match="has backbone 'resnet10' but this run expects "
                                         "'resnet18'; set backbone.name"):
        finetune(FinetuneRun(backbone={"name": "resnet18"}, encoder=result.encoder_path, **kw))
    with pytest.raises(SsltkError, match="does not fit backbone 'resnet10'"):
        finetune(FinetuneRun(backbone={**BACKBONE, "widen_factor": 0.5},
                             encoder=result.encoder_path, **kw))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(result.encoder_path.read_bytes()[:100])
    with pytest.raises(SsltkError, match="corrupted"):
        finetune(FinetuneRun(backbone=BACKBONE, encoder=bad, **kw))
