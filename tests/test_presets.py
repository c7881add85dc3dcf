"""``preset = "paper"``: one key gives an objective's published settings (issue 21, item 6)."""

from __future__ import annotations

import pytest

from ssltk.config import load_config
from ssltk.engine import PretrainRun, pretrain
from ssltk.engine.pretraining import make_pipeline
from ssltk.errors import ConfigError

BACKBONE = {"name": "resnet10", "widen_factor": 0.25, "norm": "group"}

# The published values, restated from the papers (not read from the plugins).
PAPER = {
    "moco": {"proj_hidden_dim": 2048, "proj_dim": 128, "proj_output_norm": False,
             "temperature": 0.2, "momentum": 0.999, "queue_size": 65536,
             "queue_warm_start": False, "symmetric": False},
    "yaware": {"proj_hidden_dim": 512, "proj_dim": 128, "proj_output_norm": False,
               "temperature": 0.1, "sigma": 5.0, "column": "age"},
    "simclr": {"proj_dim": 128, "proj_layers": 2, "proj_output_norm": False,
               "temperature": 0.1, "augmentations": "paper"},
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_the_paper_preset_gives_the_published_settings(registry, name):
    paper = registry.validate("objectives", {"name": name, "preset": "paper"}, "o")
    default = registry.validate("objectives", {"name": name}, "o")
    assert {k: getattr(paper, k) for k in PAPER[name]} == PAPER[name]
    assert default.preset is None and any(getattr(default, k) != v
                                          for k, v in PAPER[name].items())


def test_keys_written_beside_the_preset_win(registry):
    config = registry.validate("objectives", {"name": "moco", "preset": "paper",
                                              "queue_size": 4096}, "o")
    assert (config.queue_size, config.momentum, config.proj_output_norm) == (4096, 0.999, False)


def _toml(tmp_path, objective: str) -> str:
    path = tmp_path / "b.toml"
    path.write_text(f"""name = "b"
[data]
pretrain_store = "p.h5"
finetune_store = "f.h5"
target = "diagnosis"
[backbone]
name = "resnet10"
[pretrain]
objectives = [{objective}]
[finetune]
label_fractions = [1.0]
""")
    return path


def test_an_unknown_preset_is_a_one_line_did_you_mean_error(tmp_path, registry):
    path = _toml(tmp_path, '{ name = "moco", preset = "papr" }')
    with pytest.raises(ConfigError) as info:
        load_config(path, registry)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: pretrain.objectives[0].preset")
    assert "unknown preset 'papr'. Did you mean 'paper'? Available: paper" in message
    # an objective whose defaults are its paper's (Genesis) has no presets: the key is unknown
    with pytest.raises(ConfigError, match=r"objectives\[0\].preset: unknown key"):
        load_config(_toml(tmp_path, '{ name = "genesis", preset = "paper" }'), registry)


def test_simclr_paper_brings_its_augmentations_unless_the_run_gives_some(registry):
    from ssltk_simclr.objective import paper_views

    backbone = registry.build("backbones", BACKBONE, "b", in_channels=1, spatial_dims=2)
    objective = registry.build("objectives", {"name": "simclr", "preset": "paper"}, "o",
                               backbone=backbone)
    run = PretrainRun(store="x.h5", backbone=BACKBONE, objective={"name": "simclr"})
    names = [type(a).name for a in make_pipeline(run, registry, 2, objective).augmentations]
    assert names == [spec["name"] for spec in paper_views(2)]
    assert {"random_resized_crop", "flip", "intensity", "contrast", "gaussian_blur"} <= set(names)
    mine = run.model_copy(update={"augmentations": [{"name": "flip"}]})
    assert len(make_pipeline(mine, registry, 2, objective)) == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAPER))
def test_a_tiny_paper_pretraining_runs(tmp_path_factory, make_tiny_store, tmp_path, name):
    store = make_tiny_store(tmp_path_factory.mktemp("presets") / "s.h5", (1, 32, 32))
    run = PretrainRun(store=store, backbone=BACKBONE,
                      objective={"name": name, "preset": "paper"}, epochs=1, batch_size=4,
                      seed=0, monitor={"enabled": False})
    result = pretrain(run, tmp_path / "pt")
    assert result.encoder_path.is_file() and len(result.history) == 1
    assert result.history[0]["loss"] == pytest.approx(result.history[0]["loss"])  # finite
