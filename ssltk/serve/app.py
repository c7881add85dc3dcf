"""The FastAPI application of ``ssltk serve``: one bundle, loaded once, behind four routes.

* ``POST /predict`` (multipart field ``file``: .nii, .nii.gz, .png, .jpg; ``?gradcam=true``
  adds the Grad-CAM overlay as a base64 PNG): class probabilities (or the predicted value),
  the predicted class, the model's name and weights hash.
* ``GET /healthz``, ``GET /model`` (the bundle's model.json), ``GET /`` (the web page).

Uploads go to a per-request folder inside a private (0700) temporary folder made at start-up;
the request's folder is removed when the request ends, the private folder at shut-down. The
model is not thread-safe under Grad-CAM (MONAI's hooks keep the last activations), so every
use of it holds one lock; uploads are received concurrently.
"""

from __future__ import annotations

import base64
import html
import shutil
import tempfile
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from ssltk.engine.bundle import Bundle, load_bundle
from ssltk.engine.predict import Input, ScanError, load_scan
from ssltk.serve.page import PAGE
from ssltk.serve.upload import receive_upload

DEFAULT_MAX_UPLOAD_MB = 64.0


class Service:
    """The model behind the routes: predict (and explain) one saved upload at a time."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.lock = threading.Lock()
        self._explainer = None

    def explainer(self):
        from ssltk.engine.explain import CamExplainer

        if self._explainer is None:
            self._explainer = CamExplainer(self.bundle)
        return self._explainer

    def run(self, path: Path, filename: str, gradcam: bool) -> dict:
        from ssltk.engine.explain import explain_scan, overlay_png
        from ssltk.engine.predict import forward, predicted_label

        kind = "image" if path.suffix.lower() in (".png", ".jpg", ".jpeg") else "nifti"
        inp = Input(kind, path, filename)
        try:
            scan = load_scan(inp, self.bundle)
        except ScanError as exc:  # name the upload, not our temporary path
            raise HTTPException(422, str(exc).replace(str(path), filename)) from None
        b = self.bundle
        with self.lock:
            output = forward(b, scan.volume[None])[0]
            out = {"model": b.name, "model_sha256": b.sha256, "file": filename, "task": b.task}
            if b.task == "classification":
                out["probabilities"] = {c: float(p) for c, p in zip(b.classes, output)}
                out["predicted_class"] = predicted_label(b, output)
            else:
                out["prediction"] = float(output[0])
            if gradcam:
                name, _, heat = explain_scan(self.explainer(), scan)
                png = overlay_png(scan.volume, heat, f"{filename}: Grad-CAM for '{name}'")
                out["gradcam_class"] = name
                out["gradcam_png"] = base64.b64encode(png).decode("ascii")
        return out


def create_app(bundle_path: str | Path, *, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               device: str = "cpu", registry=None) -> FastAPI:
    """The application serving the bundle at ``bundle_path`` (loaded here, once)."""
    service = Service(load_bundle(bundle_path, registry, device))
    max_bytes = int(max_upload_mb * 2**20)
    holder: dict[str, Path] = {}

    def private_dir() -> Path:
        if "tmp" not in holder:  # made at start-up (or on first use without a lifespan)
            holder["tmp"] = Path(tempfile.mkdtemp(prefix="ssltk-serve-"))  # mode 0700
        return holder["tmp"]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        private_dir()
        try:
            yield
        finally:
            shutil.rmtree(holder.pop("tmp"), ignore_errors=True)

    app = FastAPI(title="ssltk serve", version="1", lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.service = service
    app.state.private_dir = private_dir

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "model": service.bundle.name,
                "model_sha256": service.bundle.sha256}

    @app.get("/model")
    def model() -> JSONResponse:
        return JSONResponse(service.bundle.meta)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        b = service.bundle
        values = {"model": b.name, "sha": b.sha256[:12],
                  "classes": ", ".join(b.classes or [b.meta["target"]])}
        text = PAGE
        for key, value in values.items():
            text = text.replace("{{%s}}" % key, html.escape(value))
        return text

    @app.post("/predict")
    async def predict(request: Request, gradcam: bool = False) -> dict:
        folder = Path(tempfile.mkdtemp(dir=private_dir()))
        try:
            filename, path = await receive_upload(request, folder, max_bytes)
            return await run_in_threadpool(service.run, path, filename, gradcam)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    return app
