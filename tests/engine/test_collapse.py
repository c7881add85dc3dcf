"""The collapse alarm can ring with the default heads (issue 21, item 5).

MoCo's and y-Aware's default heads end with a batch norm, after which std * sqrt(d) of the
projection is about 1 however collapsed the head is. A run forced to collapse -- its loss
replaced by minus the mean pairwise cosine of the head's outputs *before* that norm, with the
backbone detached so that only the head can collapse -- must still be named collapsed; a healthy
run of the same length must not.
"""

from __future__ import annotations

import pytest
import torch.nn.functional as F

from ssltk.engine import PretrainRun, pretrain
from ssltk.engine.monitor import COLLAPSE_STD, diagnose
from ssltk.heads import OutputNorm
from ssltk.interfaces import ObjectiveOutput

pytestmark = [pytest.mark.slow, pytest.mark.numerics]

BACKBONE = {"name": "resnet10", "widen_factor": 0.25, "norm": "group"}
LIGHT_AUG = [{"name": "flip", "p": 0.5}, {"name": "gaussian_noise", "p": 1.0}]


def _force_collapse(monkeypatch, objective_cls):
    """Replace the objective's loss by minus the mean pairwise cosine of its head's outputs
    before the output norm: minimising it points every sample the same way."""
    real = objective_cls.forward

    def forward(self, batch):
        out = real(self, batch)
        assert isinstance(self.head[-1], OutputNorm)  # the default head: output batch norm
        z = self.head[:-1](self.backbone(batch.views[0]).detach())  # (B, D) before the norm
        z = F.normalize(z, dim=1)
        return ObjectiveOutput(loss=-(z @ z.T).mean() + 0.0 * out.loss, logs=out.logs,
                               embeddings=out.embeddings)

    monkeypatch.setattr(objective_cls, "forward", forward)


def _pretrain(store, name, out, lr):
    run = PretrainRun(store=store, backbone=BACKBONE, objective={"name": name},
                      augmentations=LIGHT_AUG, epochs=3, batch_size=8, seed=0,
                      monitor={"proj_size": 16}, optimizer={"name": "adamw", "lr": lr})
    return pretrain(run, out).history


@pytest.mark.parametrize("name", ["moco", "yaware"])
def test_a_forced_collapse_rings_and_a_healthy_run_does_not(store2d, tmp_path, monkeypatch,
                                                             registry, name):
    healthy = _pretrain(store2d, name, tmp_path / "healthy", 1e-3)
    assert diagnose(healthy) == []
    objective_cls = type(registry.build("objectives", {"name": name}, "objective",
                                        backbone=_backbone(registry)))
    _force_collapse(monkeypatch, objective_cls)
    collapsed = _pretrain(store2d, name, tmp_path / "collapsed", 1e-2)
    last = collapsed[-1]["monitor"]
    # After the output norm the projection still looks isotropic: that measure cannot ring.
    assert last["proj_std"] / last["proj_std_ref"] > 3 * COLLAPSE_STD
    (warning,) = diagnose(collapsed)
    assert "collapsed" in warning and "before its output norm in a narrow cone" in warning
    assert "effective rank" not in warning  # the backbone was left alone


def _backbone(registry):
    return registry.build("backbones", BACKBONE, "backbone", in_channels=1, spatial_dims=2)
