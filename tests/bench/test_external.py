"""``[[pretrain.external]]``: encoders trained elsewhere, loaded from real files, as grid rows."""

from __future__ import annotations

import pathlib
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ssltk.bench.external import ExternalJob, file_sha256, load_external
from ssltk.bench.results import read_results
from ssltk.bench.runner import prepare
from ssltk.cli import app
from ssltk.config import ComponentSpec, ExternalEncoder
from ssltk.engine import export_encoder
from ssltk.engine.checkpoint import save_checkpoint
from ssltk.errors import ConfigError

SPEC = {"name": "resnet10", "widen_factor": 0.25, "norm": "group"}
"""The grid backbone of tests/conftest.py's BENCHMARK."""


def build(registry, spec=SPEC, seed=7):
    torch.manual_seed(seed)  # not the default init: a load that does nothing would show
    return registry.build("backbones", ComponentSpec(**spec), "backbone", in_channels=1,
                          spatial_dims=3)


def plain(backbone) -> dict:
    """The wrapped MONAI network's own state_dict (what `torch.save(net.state_dict())` holds)."""
    return backbone.net.state_dict()


# -- sources: (file content, entry keys), each as another project would write it --------------
def ssltk_state(b, path):
    torch.save(b.state_dict(), path)
    return {}


def monai_state(b, path):
    torch.save(plain(b), path)
    return {}


def medicalnet(b, path):
    state = {f"module.{k}": v for k, v in plain(b).items()}
    state["module.conv_seg.0.weight"] = torch.zeros(2, 4, 3, 3, 3)  # their segmentation head
    torch.save({"state_dict": state}, path)
    return {"strip_prefix": "module.", "drop": ["module.conv_seg."]}


def genesis(b, path):
    state = {f"module.encoder.{k}": v for k, v in plain(b).items()}
    torch.save({"epoch": 12, "state_dict": state,
                "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1.0}]}}, path)
    return {"key_map": {"module.encoder.": "net."}}


def nested(b, path):
    torch.save({"model": {"encoder": b.state_dict()}, "step": 3}, path)
    return {"state_key": "model.encoder"}


def ssltk_encoder(b, path):
    save_checkpoint(path, {"backbone": b.state_dict()}, {"backbone": "resnet10"})
    return {}


def ssltk_checkpoint(b, path):
    objective = {f"backbone.{k}": v for k, v in b.state_dict().items()}
    objective["projector.0.weight"] = torch.zeros(8, 16)
    save_checkpoint(path, {"objective": objective, "optimizer": {"state": {}}},
                    {"backbone": "resnet10", "step": 10})
    return {}


def ssltk_export(b, path):
    encoder = path.with_name("encoder.pt")
    save_checkpoint(encoder, {"backbone": b.state_dict()}, {"backbone": "resnet10"})
    export_encoder(encoder, path)  # `ssltk export`: the MONAI network's plain state_dict
    return {}


SOURCES = [ssltk_state, monai_state, medicalnet, genesis, nested, ssltk_encoder,
           ssltk_checkpoint, ssltk_export]


def job_of(path: Path, spec=SPEC, **entry) -> ExternalJob:
    ext = ExternalEncoder(name="ext", path=path, **entry)
    return ExternalJob("ext", 0, ext, ComponentSpec(**spec), file_sha256(path))


@pytest.mark.parametrize("source", SOURCES, ids=lambda f: f.__name__)
def test_every_source_loads_the_exact_weights(source, tmp_path, registry):
    reference = build(registry)
    path = tmp_path / "weights.pth"
    entry = source(reference, path)
    state = load_external(job_of(path, **entry), 1, 3, registry)
    want = reference.state_dict()
    assert state.keys() == want.keys()
    assert all(torch.equal(state[k], want[k]) for k in want)
    fresh = build(registry, seed=0)
    fresh.load_state_dict(state)  # strict
    assert torch.equal(fresh.net.conv1.weight, reference.net.conv1.weight)


def test_batch_norm_checkpoint_without_num_batches_tracked(tmp_path, registry):
    spec = SPEC | {"norm": "batch"}
    reference = build(registry, spec)
    state = {k: v for k, v in plain(reference).items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "m.pth")
    loaded = load_external(job_of(tmp_path / "m.pth", spec, strip_prefix="module."), 1, 3,
                           registry)
    assert torch.equal(loaded["net.bn1.running_var"], reference.net.bn1.running_var)


@pytest.mark.numerics
@pytest.mark.parametrize("depth, layers, shortcut, bias", [
    ("resnet10", [1, 1, 1, 1], "B", False), ("resnet18", [2, 2, 2, 2], "A", True)])
def test_medicalnet_layout_loads_with_its_shortcut_options(depth, layers, shortcut, bias,
                                                           tmp_path, registry):
    """MedicalNet's ResNets (Chen et al. 2019), as MONAI builds them for its weights: no bias
    in the 'B' shortcut of ResNet-10/50, pooling 'A' shortcuts (no weights) in ResNet-18/34;
    saved under DataParallel's ``module.`` with their segmentation head."""
    from monai.networks.nets import ResNet

    torch.manual_seed(3)
    theirs = ResNet("basic", layers, [64, 128, 256, 512], spatial_dims=3, n_input_channels=1,
                    conv1_t_stride=2, shortcut_type=shortcut, bias_downsample=bias,
                    widen_factor=0.25, feed_forward=False).eval()
    state = {f"module.{k}": v for k, v in theirs.state_dict().items()}
    state["module.conv_seg.0.weight"] = torch.zeros(8, 128, 3, 3, 3)
    torch.save({"state_dict": state}, tmp_path / "resnet.pth")
    entry = {"strip_prefix": "module.", "drop": ["module.conv_seg."]}
    spec = {"name": depth, "widen_factor": 0.25}
    with pytest.raises(ConfigError, match="missing|unexpected"):  # the default shortcut
        load_external(job_of(tmp_path / "resnet.pth", spec, **entry), 1, 3, registry)
    spec |= {"shortcut_type": shortcut, "bias_downsample": bias}
    ours = build(registry, spec, seed=0).eval()
    ours.load_state_dict(load_external(job_of(tmp_path / "resnet.pth", spec, **entry), 1, 3,
                                       registry))
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_key_mismatch_is_one_line_listing_the_first_keys(tmp_path, registry):
    path = tmp_path / "medicalnet.pth"
    medicalnet(build(registry), path)
    with pytest.raises(ConfigError) as exc:  # the prefix is not stripped
        load_external(job_of(path), 1, 3, registry)
    msg = one_line(exc)
    assert msg.startswith(f"pretrain.external[0]: {path} does not fit backbone 'resnet10': ")
    assert "missing (net.conv1.weight, net.bn1.weight, net.bn1.bias, +" in msg
    assert "unexpected (module.conv1.weight, module.bn1.weight, module.bn1.bias, +" in msg
    assert 'try strip_prefix = "module."' in msg and "docs/how-to/external-encoders.md" in msg


def test_shape_mismatch_lists_both_shapes(tmp_path, registry):
    path = tmp_path / "wide.pth"
    torch.save(plain(build(registry, SPEC | {"widen_factor": 0.5})), path)
    with pytest.raises(ConfigError) as exc:
        load_external(job_of(path), 1, 3, registry)
    msg = one_line(exc)
    assert "shape differences, file vs backbone (conv1" not in msg  # keys in the backbone's form
    assert "shape differences, file vs backbone (net.conv1.weight (32, 1, 7, 7, 7) vs " \
           "(16, 1, 7, 7, 7)" in msg
    assert "missing" not in msg and "unexpected" not in msg


class _Payload:
    """A pickle that runs code when loaded without weights_only."""

    marker: Path

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_a_pickle_with_code_is_refused_not_run(tmp_path, registry):
    payload = _Payload()
    payload.marker = tmp_path / "ran"
    path = tmp_path / "model.pth"
    torch.save({"state_dict": payload}, path)
    with pytest.raises(ConfigError) as exc:
        load_external(job_of(path), 1, 3, registry)
    msg = one_line(exc)
    assert msg.startswith(f"pretrain.external[0].path: {path} holds pickled objects")
    assert "weights_only=True" in msg and "torch.save(model.state_dict()" in msg
    assert not payload.marker.exists()


def test_missing_file_and_missing_sub_dict(tmp_path, registry):
    with pytest.raises(ConfigError) as exc:
        file_sha256(tmp_path / "nope.pth", "pretrain.external[2].path")
    assert one_line(exc) == (f"pretrain.external[2].path: weights file {tmp_path / 'nope.pth'} "
                             "does not exist; check the path (relative paths start at the "
                             "working directory)")
    path = tmp_path / "ckpt.pth"
    torch.save({"weights": plain(build(registry)), "epoch": 1}, path)
    with pytest.raises(ConfigError, match=r"neither a state_dict nor holds one under "
                                          r"state_dict, .* \(it has weights, epoch\); set "
                                          r"state_key"):
        load_external(job_of(path), 1, 3, registry)
    with pytest.raises(ConfigError, match=r"pretrain.external\[0\].state_key: .* has no "
                                          r"'model' of 'model.encoder' \(it has weights, epoch\)"):
        load_external(job_of(path, state_key="model.encoder"), 1, 3, registry)


def test_ssltk_encoder_of_another_backbone(tmp_path, registry):
    path = tmp_path / "encoder.pt"
    save_checkpoint(path, {"backbone": {}}, {"backbone": "resnet18"})
    with pytest.raises(ConfigError, match=r"pretrain.external\[0\].backbone: .* pretrained "
                                          r"with backbone 'resnet18', not 'resnet10'"):
        load_external(job_of(path), 1, 3, registry)


# -- in a benchmark ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory, make_tiny_store):
    return make_tiny_store(tmp_path_factory.mktemp("ext") / "tiny.h5", (1, 16, 16, 16), n=32)


def external_toml(make_benchmark, folder, store, *entries, **changes) -> Path:
    """The tiny benchmark with ``[[pretrain.external]]`` tables appended."""
    path = make_benchmark(folder / "ext.toml", store, output_dir=folder / "runs", **changes)
    text = path.read_text()
    for entry in entries:
        lines = [f'{k} = "{v}"' if isinstance(v, (str, Path)) else
                 f"{k} = {{ {', '.join(f'{a} = {b!r}' for a, b in v.items())} }}"
                 if isinstance(v, dict) else f"{k} = {v!r}" for k, v in entry.items()]
        text += "\n[[pretrain.external]]\n" + "\n".join(lines) + "\n"
    path.write_text(text.replace("'", '"'))
    return path


MEDICALNET = {"name": "medicalnet", "path": "medicalnet.pth", "strip_prefix": "module.",
              "drop": ["module.conv_seg."]}


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory, tiny_store, make_benchmark, registry):
    """The tiny grid (simclr, 2 seeds) with a MedicalNet-style external encoder, run once."""
    folder = tmp_path_factory.mktemp("grid")
    medicalnet(build(registry), folder / "medicalnet.pth")
    cfg = external_toml(make_benchmark, folder, tiny_store,
                        MEDICALNET | {"path": folder / "medicalnet.pth"}, seeds=[0, 1])
    result = CliRunner().invoke(app, ["run", str(cfg)])
    assert result.exit_code == 0, result.output
    return cfg, folder / "runs" / "tiny", result.output


def test_dry_run_counts_and_checks_external_cells(tmp_path, tiny_store, make_benchmark,
                                                   registry):
    medicalnet(build(registry), tmp_path / "medicalnet.pth")
    entry = MEDICALNET | {"path": tmp_path / "medicalnet.pth"}
    cfg = external_toml(make_benchmark, tmp_path, tiny_store, entry, seeds=[0, 1])
    result = CliRunner().invoke(app, ["run", str(cfg), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "finetuning: 6 cells" in result.output  # 2 seeds x (scratch, simclr, medicalnet)
    assert "external encoder medicalnet:" in result.output
    bad = external_toml(make_benchmark, tmp_path, tiny_store,
                        {k: v for k, v in entry.items() if k != "strip_prefix"})
    result = CliRunner().invoke(app, ["run", str(bad), "--dry-run"])
    assert result.exit_code == 2
    assert "pretrain.external[0]: " in result.output and "does not fit backbone" in result.output
    clash = external_toml(make_benchmark, tmp_path, tiny_store, entry | {"name": "simclr"})
    result = CliRunner().invoke(app, ["run", str(clash), "--dry-run"])
    assert result.exit_code == 2 and "'simclr' is already a method" in result.output
    typo = external_toml(make_benchmark, tmp_path, tiny_store, entry | {"strip_prefx": "x"})
    result = CliRunner().invoke(app, ["run", str(typo), "--dry-run"])
    assert result.exit_code == 2 and "pretrain.external[0].strip_prefx" in result.output


@pytest.mark.slow
def test_external_row_runs_for_every_seed_and_is_reported(grid_run):
    cfg, root, output = grid_run
    records = read_results(root / "results.jsonl")
    assert len(records) == 6
    ext = [r for r in records if r["method"] == "medicalnet"]
    assert sorted(r["seed"] for r in ext) == [0, 1]
    path = cfg.parent / "medicalnet.pth"
    for rec in ext:
        assert rec["pretrain"]["path"] == str(path)
        assert rec["pretrain"]["sha256"] == file_sha256(path)
        scratch = next(r for r in records if r["method"] == "scratch" and r["seed"] == rec["seed"])
        assert rec["split_hash"] == scratch["split_hash"]  # paired with scratch
    report = (root / "report.md").read_text()
    assert "| medicalnet |" in report
    assert len(list((root / "pretrain").glob("medicalnet-external-*/encoder.pt"))) == 1
    assert "1 external encoder(s)" in output


def test_a_changed_file_reruns_only_its_cells(grid_run, registry):
    cfg, root, _ = grid_run
    _, before = prepare(cfg)
    keys = {c.key for c in before.cells}
    medicalnet(build(registry, seed=8), cfg.parent / "medicalnet.pth")
    _, after = prepare(cfg)
    changed = [c for c in after.cells if c.key not in keys]
    assert sorted(c.method for c in changed) == ["medicalnet", "medicalnet"]
    medicalnet(build(registry), cfg.parent / "medicalnet.pth")  # back: every cell is done
    result = CliRunner().invoke(app, ["run", str(cfg), "--no-report"])
    assert "6 cells (6 already done)" in result.output


@pytest.mark.numerics
def test_own_pretraining_as_external_matches_its_method(grid_run, make_benchmark, tiny_store):
    """The grid's simclr seed-0 encoder brought back as an external file gives simclr's
    seed-0 results exactly (same weights, same splits, same seeds)."""
    cfg, root, _ = grid_run
    encoder = next((root / "pretrain").glob("simclr-seed0-*/encoder.pt"))
    own_cfg = cfg.with_name("own.toml")  # the same run folder, one more external row
    own_cfg.write_text(cfg.read_text()
                       + f'\n[[pretrain.external]]\nname = "own"\npath = "{encoder}"\n')
    result = CliRunner().invoke(app, ["run", str(own_cfg), "--no-report"])
    assert result.exit_code == 0, result.output
    assert "8 cells (6 already done)" in result.output
    records = read_results(root / "results.jsonl")
    own = {r["budget_label"]: r for r in records if r["method"] == "own" and r["seed"] == 0}
    simclr = {r["budget_label"]: r for r in records if r["method"] == "simclr"
              and r["seed"] == 0}
    assert own and own.keys() == simclr.keys()
    for label, rec in own.items():
        assert rec["metrics"] == simclr[label]["metrics"]
        assert rec["predictions"] == simclr[label]["predictions"]
