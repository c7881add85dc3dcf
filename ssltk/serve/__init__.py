"""``ssltk serve``: a model bundle behind an HTTP API and a small web page (FastAPI + uvicorn).

Needs the optional extra: ``pip install "ssltk[serve]"``.
"""

from __future__ import annotations


def create_app(*args, **kwargs):
    """See :func:`ssltk.serve.app.create_app` (imported lazily: FastAPI is optional)."""
    from ssltk.serve.app import create_app as _create

    return _create(*args, **kwargs)


__all__ = ["create_app"]
