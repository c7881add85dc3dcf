"""Pretraining with the batch prefetcher and without per-step host synchronisation (CPU)."""

from __future__ import annotations

import functools

import pytest
import torch
from _objectives import nan_after_two

from ssltk.data.prefetch import Prefetcher
from ssltk.engine import PretrainRun, pretrain, pretraining, runtime
from ssltk.engine.checkpoint import load_checkpoint
from ssltk.engine.pretraining import NonFiniteLossError
from ssltk.registry import get_registry

BACKBONE = {"name": "resnet10", "widen_factor": 0.25, "norm": "group"}
LIGHT_AUG = [{"name": "flip", "p": 0.5}, {"name": "gaussian_noise", "p": 1.0}]


def make_run(store, objective="simclr", **kw) -> PretrainRun:
    defaults = dict(store=store, backbone=BACKBONE, objective={"name": objective},
                    augmentations=LIGHT_AUG, epochs=2, batch_size=4, seed=0)
    return PretrainRun(**{**defaults, **kw})


def weights(result):
    return load_checkpoint(result.encoder_path)[0]["backbone"]


def test_threaded_prefetch_and_lazy_sync_give_the_plain_runs_weights_and_history(
        store3d, tmp_path, monkeypatch):
    """What a GPU run does differently (reader thread, sync every 50 steps), on the CPU."""
    run = make_run(store3d, channels_last=True)
    plain = pretrain(run, tmp_path / "plain")
    monkeypatch.setattr(pretraining, "Prefetcher", functools.partial(Prefetcher, threaded=True))
    monkeypatch.setattr(runtime, "sync_interval", lambda ctx: 50)
    lazy = pretrain(run, tmp_path / "lazy")
    ref = weights(plain)
    for k, v in weights(lazy).items():
        assert torch.equal(v, ref[k]), k
    def measures(record):  # the monitors, less their timing
        return {k: v for k, v in record["monitor"].items() if k != "seconds"}

    assert plain.history[0]["epoch"] == -1 and measures(lazy.history[0]) == measures(
        plain.history[0])
    for a, b in zip(plain.history[1:], lazy.history[1:]):
        for key in ("loss", "acc", "alignment", "uniformity", "lr"):
            assert a[key] == b[key], key


_NaNAfterTwo = nan_after_two("nan_after_two_lazy")


@pytest.mark.parametrize("checkpoint_every", [1, None])
def test_a_lazily_checked_nan_never_reaches_a_checkpoint(store3d, tmp_path, monkeypatch,
                                                        checkpoint_every):
    registry = get_registry()
    registry.add("objectives", _NaNAfterTwo)
    monkeypatch.setattr(runtime, "sync_interval", lambda ctx: 50)
    # no monitors: their forward at random init would count as one of the objective's calls
    run = make_run(store3d, "nan_after_two_lazy", monitor={"enabled": False})
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 2 \(epoch 0\)"):
        pretrain(run, tmp_path / "nan", registry=registry, checkpoint_every=checkpoint_every)
    ckpt = tmp_path / "nan" / "checkpoint.pt"
    if checkpoint_every:  # step 3's save found the NaN: the step-2 checkpoint is the last
        assert load_checkpoint(ckpt)[1]["step"] == 2
    else:  # caught at the end of epoch 0, before its checkpoint and history line
        assert not ckpt.exists() and not (tmp_path / "nan" / "history.jsonl").exists()
