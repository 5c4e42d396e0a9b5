"""The FastAPI application: context, authentication, limits and security headers.

Security model: the server binds 127.0.0.1 unless told otherwise; every page and API call needs
a login token (an HttpOnly, SameSite=Strict cookie set at /login, or `Authorization: Bearer`);
annotators reach only the items assigned to them (anything else is a 404); images are served
only from inside their data folder; request bodies are capped; pages are rendered with
autoescaping and a Content-Security-Policy that allows no inline script, so an explanation
containing HTML or JavaScript shows as text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import MissingExtra
from .deps import AppContext

MAX_BODY = 1 << 20  # 1 MiB for JSON saves
MAX_UPLOAD = 64 << 20  # 64 MiB for an import
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
STATIC = Path(__file__).with_name("static")


class LimitsMiddleware:
    """Pure ASGI: refuses bodies over the limit (by Content-Length, and by counting a chunked
    body), cross-origin writes, and adds the security headers to every response."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.responses import PlainTextResponse

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        limit = MAX_UPLOAD if scope["path"] == "/api/import" else MAX_BODY
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            # The whole origin must match, scheme included: http://host is another origin than
            # https://host (a plain-HTTP page on the same name must not write over TLS).
            origin = headers.get("origin")
            if origin and origin != f"{scope.get('scheme', 'http')}://{headers.get('host')}":
                await PlainTextResponse("cross-origin request refused", 403)(scope, receive, send)
                return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await PlainTextResponse(f"request body over the limit of {limit} bytes", 413)(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge()
            return message

        async def secure_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                         (b"referrer-policy", b"same-origin"), (b"x-frame-options", b"DENY"),
                         (b"cache-control", b"no-store")]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        try:
            await self.app(scope, counting_receive, secure_send)
        except BodyTooLarge:
            await PlainTextResponse(f"request body over the limit of {limit} bytes", 413)(scope, receive, send)


class BodyTooLarge(Exception):
    pass


def create_app(ctx: AppContext) -> Any:
    try:
        from fastapi import FastAPI
        from fastapi.staticfiles import StaticFiles
    except ImportError:
        raise MissingExtra("dfj annotate needs FastAPI: pip install 'deepfakejudge[annotate]'") from None
    from . import api, pages

    app = FastAPI(title="deepfakejudge annotate", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(api.router)
    app.include_router(pages.router)
    api.install_error_handlers(app)
    app.add_middleware(LimitsMiddleware)
    return app
