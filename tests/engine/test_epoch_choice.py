"""Full finetuning keeps the best validation epoch; of equal scores, the lower loss."""

from __future__ import annotations

import pytest

from ssltk.engine import finetuning
from ssltk.engine.finetuning import FinetuneRun, finetune

BACKBONE = {"name": "resnet10", "widen_factor": 0.125, "norm": "group"}


def scripted(monkeypatch, scores, losses):
    """Make validation epoch ``e`` score ``scores[e]`` with loss ``losses[e]``."""
    epoch = iter(range(len(scores)))
    seen = []

    def score(*args):
        seen.append(next(epoch))
        return scores[seen[-1]]

    monkeypatch.setattr(finetuning, "val_score_of", score)
    monkeypatch.setattr(finetuning, "val_loss_of", lambda *args: losses[seen[-1]])


@pytest.mark.parametrize("scores, losses, best", [
    ([0.7, 1.0, 1.0, 1.0, 0.9], [0.69, 0.55, 0.05, 0.2, 0.1], 2),  # a tie: the lower loss
    ([0.7, 1.0, 0.9, 0.8, 0.9], [0.69, 0.55, 0.05, 0.01, 0.1], 1),  # the score comes first
    ([0.7, 0.7, 0.7, 0.7, 0.7], [0.5, 0.5, 0.5, 0.5, 0.5], 0),  # all equal: the first
])
def test_the_best_epoch_is_the_highest_score_then_the_lowest_loss(store2d, monkeypatch,
                                                                  scores, losses, best):
    scripted(monkeypatch, scores, losses)
    run = FinetuneRun(store=store2d, target="diagnosis", classes=["CN", "AD"],
                      backbone=BACKBONE, mode="full", train_rows=list(range(8)),
                      val_rows=[8, 9, 10, 11], test_rows=[12, 13, 14, 15], epochs=5,
                      batch_size=8, patience=5)
    result = finetune(run, device="cpu")
    assert result.best_epoch == best
    assert [h["val_loss"] for h in result.history] == losses
