"""`dfj serve`: serve a local judge over an OpenAI-compatible HTTP API (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import MissingExtra, UsageError
from .options import add_model_options, backend_from_args

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a judge over an OpenAI-compatible HTTP API with dynamic batching",
                       description="Serve --model over /v1/chat/completions, /v1/models, /health, "
                                   "/v1/judge/pointwise and /v1/judge/pairwise.")
    add_model_options(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    g.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    g.add_argument("--api-key", default=os.environ.get("DFJ_SERVE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 routes (default: $DFJ_SERVE_API_KEY; none: open)")
    g.add_argument("--insecure-no-key", action="store_true",
                   help="allow a --host beyond this machine without --api-key (refused by default)")
    g.add_argument("--served-model-name", default=None, help="model id clients send (default: --model as given)")
    g.add_argument("--allowed-root", type=Path, default=None,
                   help="local image paths in requests are read only from under this folder (default: refused)")
    g.add_argument("--template", default=None,
                   help="prompt of the judge endpoints: FILE, 'official' or 'default' (default: the authors' prompt "
                        "when --model/--adapter is a released DFJ judge, else the project's own; see dfj judge --help)")
    g.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    lim = p.add_argument_group("limits and batching")
    lim.add_argument("--max-body-bytes", type=int, default=32 * 2**20, help="largest request body (default 32 MiB)")
    lim.add_argument("--max-image-pixels", type=int, default=40_000_000, help="largest image, width x height (default 40M)")
    lim.add_argument("--max-text-chars", type=int, default=32_000, help="longest prompt text (default 32000 characters)")
    lim.add_argument("--max-new-tokens", type=int, default=2048, help="largest max_tokens a request may ask (default 2048)")
    lim.add_argument("--max-logprobs", type=int, default=20, help="largest top_logprobs a request may ask (default 20)")
    lim.add_argument("--batch-window-ms", type=float, default=10.0,
                     help="how long a request waits for others to batch with (default 10 ms)")
    lim.add_argument("--max-batch", type=int, default=16, help="most requests per model call (default 16)")
    lim.add_argument("--max-pixels-in-flight", type=int, default=160_000_000,
                     help="decoded image pixels held at once across all requests; beyond it a request waits "
                          "(default 160M, about 0.5 GB of RGB)")
    lim.add_argument("--admission-wait", type=float, default=10.0,
                     help="seconds a request waits for room under --max-pixels-in-flight before a 503 with "
                          "Retry-After (default 10)")
    lim.add_argument("--decode-workers", type=int, default=4, help="threads that decode images, off the event loop (default 4)")
    lim.add_argument("--body-timeout", type=float, default=30.0,
                     help="seconds a client has to send its whole request body, else 408 (default 30)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serve.app import create_app
    except ImportError as exc:
        raise MissingExtra(
            f"dfj serve needs FastAPI, uvicorn and python-multipart ({exc.name} is missing); "
            "install them with: pip install 'deepfakejudge[serve]'"
        ) from exc
    from ..prompts import resolve_template
    from ..prompts.official import released_kind
    from ..serve import ServeSettings

    if args.template is None and (released_kind(args.adapter) or released_kind(args.model)):
        args.template = "official"  # a released judge is served with the prompt it was trained on
    for kind in ("pointwise", "pairwise"):  # a wrong file or a missing official prompt fails before the model loads
        resolve_template(args.template, kind)
    settings = ServeSettings(
        model_name=args.served_model_name or args.model,
        api_key=args.api_key or None,
        allowed_root=args.allowed_root,
        max_body_bytes=args.max_body_bytes,
        max_image_pixels=args.max_image_pixels,
        max_text_chars=args.max_text_chars,
        max_new_tokens=args.max_new_tokens,
        max_logprobs=args.max_logprobs,
        batch_window_ms=args.batch_window_ms,
        max_batch=args.max_batch,
        max_pixels_in_flight=args.max_pixels_in_flight,
        admission_wait_s=args.admission_wait,
        decode_workers=args.decode_workers,
        body_timeout_s=args.body_timeout,
        template=args.template,
    )
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    if args.host not in LOOPBACK and settings.api_key is None:
        if not args.insecure_no_key:
            raise UsageError(f"--host {args.host}: binding beyond this machine needs --api-key (or $DFJ_SERVE_API_KEY), "
                             "else anyone who can reach the port can use the model; pass --insecure-no-key to "
                             "serve it open anyway")
        print(f"dfj serve: warning: binding {args.host} without --api-key (--insecure-no-key): anyone who can reach "
              "this port can use the model", file=sys.stderr)
    backend = backend_from_args(args)
    try:
        app = create_app(backend, settings)
        print(f"dfj serve: {settings.model_name} on http://{args.host}:{args.port}/v1 "
              f"(batches of up to {settings.max_batch}, {settings.batch_window_ms:g} ms window)", file=sys.stderr)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    finally:
        backend.close()
    return 0
