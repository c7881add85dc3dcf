"""Model bundles: the probe as a torch layer, what a bundle holds, loading, export, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ssltk.cli import app
from ssltk.engine.bundle import (MODEL_JSON, WEIGHTS, fold_standardisation, load_bundle,
                                 probe_arrays, probe_to_linear)
from ssltk.engine.predict import forward
from ssltk.errors import SsltkError
from ssltk.store import VolumeStore


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _fit(task: str, y: np.ndarray, x: np.ndarray):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    est = LogisticRegression(C=0.5, max_iter=2000) if task == "classification" else Ridge(0.3)
    return make_pipeline(StandardScaler(), est).fit(x, y)


@pytest.mark.parametrize("classes_seen, n_classes", [([0, 1], 2), ([0, 1, 2], 3), ([0, 2], 3),
                                                     ([0, 1, 3], 4)])
def test_probe_as_linear_layer_gives_scikit_learn_probabilities(classes_seen, n_classes):
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (60, 7)) * rng.uniform(0.5, 4, 7)  # unstandardised features
    y = np.array(classes_seen)[np.arange(60) % len(classes_seen)]
    x[np.arange(60), y % 7] += 2.0  # learnable
    model = _fit("classification", y, x)
    layer = probe_to_linear(probe_arrays(model, "classification"), n_classes)
    ours = torch.softmax(layer(torch.as_tensor(x, dtype=torch.float32)), -1).detach().numpy()
    want = np.zeros((60, n_classes))
    want[:, model.classes_] = model.predict_proba(x)  # classes never seen: probability 0
    assert np.abs(ours - want).max() < 1e-4


def test_ridge_probe_and_folded_regression_head_give_the_value():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 3, (40, 5))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 60.0
    model = _fit("regression", y, x)
    layer = probe_to_linear(probe_arrays(model, "regression"), 1)
    ours = layer(torch.as_tensor(x, dtype=torch.float32)).detach().numpy()[:, 0]
    assert np.abs(ours - model.predict(x)).max() < 1e-3
    head = torch.nn.Linear(5, 1)  # trained on z-scored targets: value = out * std + mean
    state = fold_standardisation(head, 60.0, 4.0)
    folded = torch.nn.Linear(5, 1)
    folded.load_state_dict(state)
    z = torch.randn(8, 5)
    assert torch.allclose(folded(z), head(z) * 4.0 + 60.0, atol=1e-5)


@pytest.mark.parametrize("which", ["lesion3d", "lesion2d"])
def test_bundle_reproduces_the_test_predictions_of_finetuning(which, request):
    built = request.getfixturevalue(which)
    bundle = load_bundle(built.bundle)
    rows = built.result.predictions["rows"]
    with VolumeStore.open(built.store) as store:
        x = np.stack([np.asarray(store[r], dtype=np.float32) for r in rows])
    ours = forward(bundle, x)
    assert np.abs(ours - np.asarray(built.result.predictions["proba"])).max() < 1e-4
    assert bundle.classes == built.result.predictions["classes"]


def test_bundle_holds_weights_only_tensors_and_a_complete_model_json(lesion3d):
    meta = json.loads((lesion3d.bundle / MODEL_JSON).read_text())
    payload = torch.load(lesion3d.bundle / WEIGHTS, weights_only=True)  # no code unpickled
    probe = payload["state"]["probe"]
    assert set(probe) == {"mean", "scale", "coef", "intercept", "classes"}
    assert all(isinstance(v, torch.Tensor) for v in probe.values())
    assert meta["backbone"]["name"] == "resnet10" and meta["mode"] == "frozen"
    assert meta["head"] == {"type": "linear", "in_features": 64, "out_features": 2,
                            "source": "scikit-learn probe"}
    assert meta["task"] == "classification" and meta["target"] == "diagnosis"
    assert meta["classes"] == ["lesion", "none"]
    prep = meta["preprocessing"]
    assert prep["kind"] == "nifti" and prep["spatial_dims"] == 3 and prep["shape"] == [20] * 3
    assert prep["orientation"] == "RAS" and prep["spacing"] == 2.0
    assert prep["normalize"] == "percentile"
    assert prep["store_record"]["pipeline"] == "ssltk ingest nifti"
    assert meta["config_hash"] == lesion3d.run.content_hash()
    assert "roc_auc" in meta["metrics"] and meta["val_score"] is not None
    assert meta["versions"]["torch"] and meta["versions"]["monai"]


def test_altered_or_foreign_bundles_are_refused(lesion3d, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(lesion3d.bundle, copy)
    with open(copy / WEIGHTS, "r+b") as f:
        f.seek(-20, 2)
        f.write(b"\x00" * 4)
    with pytest.raises(SsltkError, match="does not match the SHA-256"):
        load_bundle(copy)
    with pytest.raises(SsltkError, match="not a model bundle"):
        load_bundle(tmp_path)


def test_export_a_bundle_as_a_plain_monai_state_dict(lesion3d, tmp_path):
    from monai.networks.nets import ResNet

    result = invoke("export", lesion3d.bundle, "--out", tmp_path / "monai.pt")
    assert result.exit_code == 0, result.output
    net = ResNet("basic", [1, 1, 1, 1], [64, 128, 256, 512], spatial_dims=3, n_input_channels=1,
                 conv1_t_size=3, conv1_t_stride=1, no_max_pool=True, widen_factor=0.125,
                 feed_forward=False, norm=("group", {"num_groups": 8}))
    from ssltk_backbones._common import replace_batch_norm

    replace_batch_norm(net, "group")
    net.load_state_dict(torch.load(tmp_path / "monai.pt", weights_only=True))


CONFIG = """
name = "save"
output_dir = "{out}"
[data]
pretrain_store = "{store}"
finetune_store = "{store}"
target = "diagnosis"
classes = ["CN", "AD"]
[backbone]
name = "resnet10"
widen_factor = 0.25
[pretrain]
objectives = [{{name = "simclr"}}]
[finetune]
n_per_class = [3]
val_fraction = 0.25
test_fraction = 0.25
"""


def test_finetune_cli_saves_a_bundle_that_predict_loads(tmp_path, store3d):
    cfg = tmp_path / "cli.toml"
    cfg.write_text(CONFIG.format(out=tmp_path / "runs", store=store3d))
    result = invoke("finetune", cfg, "--save-model", tmp_path / "model", "--out",
                    tmp_path / "ft.json")
    assert result.exit_code == 0, result.output
    bundle = load_bundle(tmp_path / "model")
    assert bundle.classes == ["CN", "AD"] and bundle.meta["info"]["method"] == "scratch"
    saved = json.loads((tmp_path / "ft.json").read_text())
    assert bundle.meta["metrics"]["roc_auc"] == saved["metrics"]["roc_auc"]
    again = invoke("finetune", cfg, "--save-model", tmp_path / "model")  # replaces the bundle
    assert again.exit_code == 0, again.output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    refused = invoke("finetune", cfg, "--save-model", tmp_path / "other")
    assert refused.exit_code == 1 and "is not a model bundle" in refused.output
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"
