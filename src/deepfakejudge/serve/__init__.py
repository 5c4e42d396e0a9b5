"""`dfj serve`: the local backend behind an OpenAI-compatible HTTP API, batched dynamically.

Needs the `serve` extra (FastAPI, uvicorn, python-multipart): `pip install 'deepfakejudge[serve]'`.
"""

from .settings import ApiError, ServeSettings

__all__ = ["ApiError", "ServeSettings", "create_app"]


def create_app(*args, **kwargs):
    """See `serve.app.create_app`; imported on use so that the settings load without FastAPI."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)
