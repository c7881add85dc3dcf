"""``ssltk serve``'s HTTP API through FastAPI's test client (and httpx for concurrency)."""

from __future__ import annotations

import asyncio
import base64
import json

import nibabel as nib
import numpy as np
import pytest
from _lesion import head_2d, save_png

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from ssltk.engine.bundle import load_bundle  # noqa: E402
from ssltk.engine.predict import forward  # noqa: E402
from ssltk.serve import app as app_module  # noqa: E402
from ssltk.serve.app import create_app  # noqa: E402
from ssltk.store import VolumeStore  # noqa: E402


@pytest.fixture(scope="module")
def app2d(lesion2d):
    return create_app(lesion2d.bundle, max_upload_mb=0.05)


@pytest.fixture
def client(app2d):
    with TestClient(app2d) as c:  # runs the lifespan: the private temp folder
        yield c


def png_bytes(tmp_path, seed=3) -> bytes:
    return save_png(head_2d(seed), tmp_path / "x.png").read_bytes()


def test_predict_an_image_returns_the_bundles_probabilities(client, lesion2d, tmp_path):
    data = png_bytes(tmp_path)
    response = client.post("/predict", files={"file": ("slice.png", data, "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    bundle = load_bundle(lesion2d.bundle)
    from ssltk.store.ingest_images import load_image

    want = forward(bundle, load_image(tmp_path / "x.png", (32, 32))[None])[0]
    assert body["probabilities"] == pytest.approx(dict(zip(bundle.classes, want)), abs=1e-6)
    assert body["predicted_class"] == bundle.classes[int(np.argmax(want))]
    assert body["model"] == "bundle2d" and body["model_sha256"] == bundle.sha256
    assert "gradcam_png" not in body
    with_cam = client.post("/predict?gradcam=true", files={"file": ("s.png", data)}).json()
    assert base64.b64decode(with_cam["gradcam_png"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert with_cam["gradcam_class"] == body["predicted_class"]


def test_predict_a_nifti_upload(lesion3d, tmp_path):
    with VolumeStore.open(lesion3d.store) as store:
        row = np.asarray(store[3], dtype=np.float32)
    nib.save(nib.Nifti1Image(row[0], np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "s.nii.gz")
    with TestClient(create_app(lesion3d.bundle)) as client:
        response = client.post("/predict", files={
            "file": ("sub-03_T1w.nii.gz", (tmp_path / "s.nii.gz").read_bytes())})
    assert response.status_code == 200, response.text
    want = forward(load_bundle(lesion3d.bundle), row[None])[0]
    assert response.json()["probabilities"]["lesion"] == pytest.approx(want[0], abs=2e-3)


def test_healthz_model_and_page(client, lesion2d):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["model"] == "bundle2d"
    meta = client.get("/model").json()
    assert meta == json.loads((lesion2d.bundle / "model.json").read_text())
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="file"' in page.text and "bundle2d" in page.text


def test_oversize_wrong_type_and_unreadable_uploads(client, tmp_path):
    big = client.post("/predict", files={"file": ("big.png", b"\x00" * 200_000)})
    assert big.status_code == 413 and "limit of 0.05 MiB" in big.json()["detail"]
    text = client.post("/predict", files={"file": ("notes.txt", b"hello")})
    assert text.status_code == 415 and "upload a .nii" in text.json()["detail"]
    garbage = client.post("/predict", files={"file": ("scan.png", b"not a png at all")})
    assert garbage.status_code == 422
    detail = garbage.json()["detail"]
    assert detail.startswith("scan.png: cannot read the image") and "\n" not in detail
    assert str(tmp_path) not in detail and "ssltk-serve-" not in detail  # no server paths
    nifti = client.post("/predict", files={"file": ("x.nii.gz", b"\x1f\x8bnot gzip")})
    assert nifti.status_code == 422 and "x.nii.gz" in nifti.json()["detail"]
    none = client.post("/predict", data={"other": "1"}, files={"nofile": ("a.png", b"x")})
    assert none.status_code == 422 and "no file" in none.json()["detail"]
    raw = client.post("/predict", content=b"{}", headers={"content-type": "application/json"})
    assert raw.status_code == 415


def test_a_3d_upload_to_a_2d_model_is_refused(client, tmp_path):
    nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.float32), np.eye(4)), tmp_path / "v.nii")
    response = client.post("/predict", files={"file": ("v.nii", (tmp_path / "v.nii").read_bytes())})
    assert response.status_code == 422 and "takes 2D" in response.json()["detail"]


def test_concurrent_requests_and_temporary_files(app2d, tmp_path):
    """Twelve requests at once (some with Grad-CAM): every answer is the one its own upload
    gets alone; the private temporary folder is empty afterwards."""
    uploads = [png_bytes(tmp_path, seed) for seed in range(6)]

    async def run() -> list:
        transport = httpx.ASGITransport(app=app2d)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            jobs = [c.post(f"/predict?gradcam={i % 2 == 0}", files={"file": (f"{i}.png", u)})
                    for i, u in enumerate(uploads * 2)]
            return await asyncio.gather(*jobs)

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 12
    with TestClient(app2d) as c:
        alone = [c.post("/predict", files={"file": ("a.png", u)}).json() for u in uploads]
    for i, r in enumerate(responses):
        assert r.json()["probabilities"] == pytest.approx(alone[i % 6]["probabilities"],
                                                          abs=1e-6)
    assert not list(app2d.state.private_dir().iterdir())


def test_the_model_is_loaded_once_at_start_up(lesion2d, monkeypatch, tmp_path):
    calls = []
    real = app_module.load_bundle
    monkeypatch.setattr(app_module, "load_bundle", lambda *a, **k: calls.append(1) or real(*a, **k))
    app = create_app(lesion2d.bundle)
    with TestClient(app) as c:
        for _ in range(3):
            assert c.post("/predict", files={"file": ("a.png", png_bytes(tmp_path))}
                          ).status_code == 200
        private = app.state.private_dir()
        assert private.stat().st_mode & 0o077 == 0  # private: owner only
    assert calls == [1] and not private.exists()  # removed at shut-down


def test_serve_binds_localhost_by_default(monkeypatch, lesion2d):
    import uvicorn
    from typer.testing import CliRunner

    from ssltk.cli import app

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    result = CliRunner().invoke(app, ["serve", str(lesion2d.bundle)])
    assert result.exit_code == 0, result.output
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8000
