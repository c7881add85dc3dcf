"""``ssltk serve BUNDLE``: the model behind an HTTP API and a web page (FastAPI + uvicorn)."""

from __future__ import annotations

from typing import Annotated

import typer

from ssltk.cli._common import console, registry
from ssltk.cli.predict import BundleArg, DeviceOpt
from ssltk.errors import SsltkError


def command(
    ctx: typer.Context,
    bundle: BundleArg,
    host: Annotated[str, typer.Option("--host", help="Address to bind (another than "
                                      "127.0.0.1 exposes the model to the network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    max_upload_mb: Annotated[float, typer.Option(
        "--max-upload-mb", min=0.001, help="Largest accepted upload (413 past it).")] = 64.0,
    device: DeviceOpt = "cpu",
) -> None:
    """Serve BUNDLE: POST /predict, GET /healthz, GET /model and a web page at /."""
    try:
        import uvicorn

        from ssltk.serve.app import create_app
    except ImportError as exc:
        raise SsltkError(f"ssltk serve needs the 'serve' extra ({exc.name} is missing); "
                         f"pip install 'ssltk[serve]'") from None
    from ssltk.engine.runtime import resolve_device

    app = create_app(bundle, max_upload_mb=max_upload_mb, device=str(resolve_device(device)),
                     registry=registry(ctx))
    console().print(f"serving {app.state.service.bundle.name} on http://{host}:{port}/ "
                    f"(Ctrl-C to stop)", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="info")
