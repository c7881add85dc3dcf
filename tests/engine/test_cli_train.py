"""``ssltk pretrain / finetune / embed / export`` through typer's CliRunner."""

from __future__ import annotations

import json

import h5py
import pytest
import torch
from typer.testing import CliRunner

from ssltk.cli import app
from ssltk.registry import get_registry

def write_config(make_benchmark, tmp_path, store, objective="simclr"):
    """The tiny benchmark of tests/conftest.py: batch norm, batches of 4, no augmentation,
    ``objective`` and genesis, 3 per class."""
    return make_benchmark(
        tmp_path / "cli.toml", store, name="cli", output_dir=tmp_path / "runs",
        backbone={"norm": None},
        pretrain={"batch_size": 4, "augmentations": [],
                  "objectives": [{"name": objective}, {"name": "genesis"}]},
        finetune={"n_per_class": [3]})


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("objective", get_registry().names("objectives"))
def test_every_objective_pretrains_and_finetunes_through_the_cli(objective, dims, tmp_path,
                                                                   store2d, store3d,
                                                                   make_benchmark):
    cfg = write_config(make_benchmark, tmp_path, store3d if dims == 3 else store2d, objective)
    result = invoke("pretrain", cfg, "--objective", objective, "--out", tmp_path / "pt",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    result = invoke("finetune", cfg, "--encoder", tmp_path / "pt" / "encoder.pt",
                    "--n-per-class", 2)
    assert result.exit_code == 0, result.output
    assert "roc_auc" in result.output


def test_pretrain_finetune_embed_export(tmp_path, store3d, make_benchmark):
    cfg = write_config(make_benchmark, tmp_path, store3d)
    out = tmp_path / "pt"
    result = invoke("pretrain", cfg, "--objective", "genesis", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    encoder = out / "encoder.pt"
    assert encoder.exists() and "done" in result.output
    assert "already done" in invoke("pretrain", cfg, "--objective", "genesis", "--out", out,
                                    "--no-progress").output

    result = invoke("finetune", cfg, "--encoder", encoder, "--n-per-class", 2,
                    "--out", tmp_path / "ft.json")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ft.json").read_text())["metrics"]
    assert 0 <= metrics["roc_auc"] <= 1 and "roc_auc" in result.output

    result = invoke("embed", store3d, "--out", tmp_path / "emb.h5", "--backbone", "resnet10",
                    "--backbone-params", '{"widen_factor": 0.25}', "--encoder", encoder)
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "emb.h5") as f:
        assert f["embeddings"].shape == (16, 128) and "diagnosis" in f["meta"]

    result = invoke("export", encoder, "--out", tmp_path / "monai.pt")
    assert result.exit_code == 0, result.output
    from monai.networks.nets import ResNet

    net = ResNet("basic", [1, 1, 1, 1], [64, 128, 256, 512], spatial_dims=3, n_input_channels=1,
                 conv1_t_stride=2, widen_factor=0.25, feed_forward=False)
    net.load_state_dict(torch.load(tmp_path / "monai.pt", weights_only=True))


def test_cli_errors_are_one_line(tmp_path, store3d, make_benchmark):
    cfg = write_config(make_benchmark, tmp_path, store3d)
    for args, expected in (
        (("pretrain", cfg, "--objective", "byol"), "--objective 'byol' is not in"),
        (("finetune", cfg, "--n-per-class", 50), "--n-per-class: 50 per class"),
        (("finetune", cfg, "--mode", "linear"), "--mode 'linear' must be frozen or full"),
        (("embed", store3d, "--out", tmp_path / "e.h5", "--backbone-params", "{oops"),
         "--backbone-params is not valid JSON"),
    ):
        result = invoke(*args)
        assert result.exit_code != 0
        assert result.output.strip().splitlines() == [result.output.strip()]
        assert expected in result.output, result.output
