"""The default view pipelines: 3D volumes and 2D images (grey-level jitter, issue 12)."""

from __future__ import annotations

import torch

from ssltk.augment import (DEFAULT_PIPELINE, DEFAULT_PIPELINE_2D, INTENSITY_JITTER, Pipeline,
                           default_pipeline)
from ssltk.engine.pretraining import PretrainRun, make_pipeline


def names(specs):
    return [s["name"] for s in specs]


def test_2d_adds_grey_level_jitter_and_3d_keeps_the_brain_default(registry):
    assert default_pipeline(3) == DEFAULT_PIPELINE
    assert names(default_pipeline(2)) == names(DEFAULT_PIPELINE) + ["intensity", "gamma", "contrast"]
    assert default_pipeline(2) == DEFAULT_PIPELINE_2D
    default_pipeline(2)[0]["p"] = 0.0  # a copy: the module's defaults stay as they are
    assert DEFAULT_PIPELINE_2D[0]["p"] == 1.0 and INTENSITY_JITTER[0]["p"] == 0.8
    x = torch.rand(4, 1, 28, 28)
    a, b = Pipeline.from_specs(registry, DEFAULT_PIPELINE_2D).views(x, 2, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.isfinite(a).all() and not torch.equal(a, b)


def test_a_run_without_augmentations_gets_the_default_of_its_store(registry, tmp_path):
    run = PretrainRun(store=tmp_path / "x.h5", backbone={"name": "resnet10"},
                      objective={"name": "simclr"})
    two_d = [a.name for a in make_pipeline(run, registry, spatial_dims=2).augmentations]
    three_d = [a.name for a in make_pipeline(run, registry, spatial_dims=3).augmentations]
    assert two_d == names(DEFAULT_PIPELINE_2D) and three_d == names(DEFAULT_PIPELINE)
    given = run.model_copy(update={"augmentations": [{"name": "flip"}]})
    assert [a.name for a in make_pipeline(given, registry, spatial_dims=2).augmentations] == ["flip"]
