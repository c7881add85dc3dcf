"""EpochStats and NonFiniteWatch: no host synchronisation per step, same sums as floats.

Tensors on the ``meta`` device hold no data: converting one to a float raises. A step's
bookkeeping that accepts them has provably not synchronised.
"""

from __future__ import annotations

import math

import pytest
import torch

from ssltk.engine.runtime import EpochStats, NonFiniteWatch, alignment_uniformity
from ssltk.interfaces import ObjectiveOutput

pytestmark = pytest.mark.numerics


def outputs(n: int, as_tensors: bool, seed: int = 0) -> list[ObjectiveOutput]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        loss, acc = torch.rand(2, generator=g)
        z = torch.nn.functional.normalize(torch.randn(2, 4, 3, generator=g), dim=-1)
        logs = {"acc": acc if as_tensors else float(acc), "loss": loss if as_tensors
                else float(loss), "plugin_float": 0.1}  # a third-party plugin's float
        out.append(ObjectiveOutput(loss=loss, logs=logs, embeddings=z))
    return out


def fill(stats: EpochStats, outs: list[ObjectiveOutput]) -> EpochStats:
    for o in outs:
        stats.add(o, volumes=4, data_time=0.01, step_time=0.1, lr=0.5)
    return stats


@pytest.mark.parametrize("flush_every", [1, 3, 100])
def test_tensor_logs_sum_exactly_like_floats(flush_every):
    floats = fill(EpochStats(flush_every=1), outputs(7, as_tensors=False)).summary()
    stats = fill(EpochStats(flush_every=flush_every), outputs(7, as_tensors=True))
    tensors = stats.summary()
    for k in ("loss", "acc", "plugin_float", "alignment", "uniformity"):
        assert tensors[k] == floats[k], k  # the same float64 additions in the same order
    assert set(tensors) == set(floats)


def test_a_checkpointed_state_round_trips_mid_flush():
    outs = outputs(5, as_tensors=True)
    a = fill(EpochStats(flush_every=100), outs[:3])
    b = EpochStats.from_dict(a.as_dict())  # as_dict flushes the 3 pending steps
    fill(b, outs[3:])
    whole = fill(EpochStats(flush_every=100), outs).summary()
    got = b.summary()
    assert got["loss"] == whole["loss"] and b.steps == 5 and b.volumes == 20


def test_adding_a_step_never_reads_a_tensor_back():
    stats = EpochStats(flush_every=10)
    meta = torch.zeros((), device="meta")
    out = ObjectiveOutput(loss=meta, logs={"acc": meta},
                          embeddings=torch.zeros(2, 4, 3, device="meta"))
    for _ in range(9):
        stats.add(out, 4, 0.0, 0.1, 1.0)  # would raise if it called float() / .item()
    with pytest.raises(Exception):
        stats.add(out, 4, 0.0, 0.1, 1.0)  # the 10th step flushes: meta tensors have no value


def test_alignment_uniformity_stays_on_the_device():
    z = torch.zeros(2, 4, 3, device="meta")
    out = alignment_uniformity(z)
    assert all(v.device.type == "meta" and v.ndim == 0 for v in out.values())


def test_watch_reports_the_first_non_finite_step_only():
    watch = NonFiniteWatch()
    assert watch.first() is None
    for step, value in enumerate([1.0, 2.0, 0.5]):
        watch.observe(torch.tensor(value), step)
    assert watch.first() is None
    watch.observe(torch.tensor(float("inf")), 3)
    watch.observe(torch.tensor(float("nan")), 4)
    step, loss = watch.first()
    assert step == 3 and math.isinf(loss)


def test_watch_observes_without_reading_back():
    watch = NonFiniteWatch()
    for step in range(3):
        watch.observe(torch.zeros((), device="meta"), step)
    with pytest.raises(Exception):
        watch.first()
