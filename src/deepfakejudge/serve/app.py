"""The HTTP app: OpenAI-compatible chat completions over a local backend, plus judge endpoints.

Routes: `GET /health` (open: liveness and batching figures), `GET /v1/models`,
`POST /v1/chat/completions` (logprobs/top_logprobs; a final assistant message is continued with
`continue_final_message`), `POST /v1/judge/pointwise`, `POST /v1/judge/pairwise` (JSON with a
base64 `image` or an `image_path` under --allowed-root, or a multipart upload). Every `/v1` route
checks `Authorization: Bearer KEY` when the server has a key. Errors are OpenAI-style JSON with
a message naming the field or the limit; tracebacks stay in the server log.

Under load the event loop only moves bytes: bodies are read within --body-timeout, then parsed
and their image decoded once in a small worker pool, after the image's pixels are admitted by
the server's `PixelGate` (see admission.py); the judges take the decoded image. A client that
disconnects has its work dropped and costs one log line.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..backends.base import Backend, BackendError, Generation, GenerationConfig
from ..backends.budget import PromptTooLong
from ..data.images import LoadedImage
from ..judge import PairwiseJudge, PointwiseJudge
from ..judge.common import Prepared
from ..prompts import resolve_template
from ..records import LABELS, RowError, Sample
from ..results import MODEL_ERROR_FIELD, verdict_row
from ..tasks import MAX_NEW_TOKENS, MODES
from .admission import PixelGate, Ticket
from .batcher import BatchedBackend, Batcher
from .inputs import (
    ChatCall,
    ClientGone,
    DecodedImage,
    decode_image,
    image_from_source,
    parse_chat,
    parse_json,
    read_body,
)
from .settings import ApiError, ServeSettings

log = logging.getLogger("deepfakejudge.serve")
MIN_LOGPROB = -9999.0  # JSON has no -inf; OpenAI reports the same floor


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(ApiError(status, message, param, kind).body(), status_code=status)


def _token_entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": max(logprob, MIN_LOGPROB), "bytes": list(token.encode("utf-8"))}


def completion_body(call: ChatCall, generation: Generation, model: str) -> dict[str, Any]:
    logprobs = None
    if call.logprobs:
        logprobs = {
            "content": [
                {**_token_entry(s.token, s.logprob),
                 "top_logprobs": [_token_entry(t, lp) for t, lp in s.top[: call.top_logprobs]]}
                for s in generation.steps
            ]
        }
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": generation.text},
                "logprobs": logprobs,
                "finish_reason": generation.finish_reason or "stop",
            }
        ],
        **_usage(generation),
    }


def _usage(generation: Generation) -> dict[str, Any]:
    """OpenAI's `usage` block, when the engine counted both sides (clients tally cost from it)."""
    p, c = generation.prompt_tokens, generation.completion_tokens
    if p is None or c is None:
        return {}
    return {"usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}}


class _Counters:
    def __init__(self) -> None:
        self.requests: dict[str, int] = {}

    def count(self, route: str) -> None:
        self.requests[route] = self.requests.get(route, 0) + 1


def listed_weights(described: dict[str, Any]) -> dict[str, str]:
    """What `/v1/models` says of the weights behind the served name, as vLLM lists them (`root`:
    the checkpoint, or the adapter with its base as `parent`), plus a fingerprint of the folders'
    files: a client's request cache keys on these (backends/cache.py), so a model retrained in
    place or served under another model's name is not answered from old entries."""
    model, adapter = described.get("model"), described.get("adapter")
    listed = {"root": str(adapter), "parent": str(model)} if adapter else {"root": str(model)} if model else {}
    files = {k: described.get(k) for k in ("model_files", "adapter_files") if described.get(k)}
    if files:
        digest = hashlib.sha256(json.dumps(files, sort_keys=True, default=str).encode()).hexdigest()
        listed["dfj_fingerprint"] = digest[:16]
    return listed


def create_app(backend: Backend, settings: ServeSettings) -> FastAPI:
    batcher = Batcher(backend, settings.batch_window_ms / 1000.0, settings.max_batch)
    judge_threads = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="dfj-judge")
    # Parsing and image decoding run here, off the event loop (which keeps /health answering),
    # at most `decode_workers` at once, each image's pixels admitted by the gate first.
    decoders = concurrent.futures.ThreadPoolExecutor(max_workers=settings.decode_workers, thread_name_prefix="dfj-decode")
    gate = PixelGate(settings.max_pixels_in_flight)
    counters = _Counters()
    started = time.time()
    templates = {kind: resolve_template(settings.template, kind) for kind in ("pointwise", "pairwise")}
    weights = listed_weights(backend.describe())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            judge_threads.shutdown(wait=False, cancel_futures=True)
            decoders.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="deepfakejudge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        # One line, no traceback: a client that hangs up is not a server error. Its work was cancelled.
        log.warning("client went away on %s %s; its request was dropped", request.method, request.url.path)
        return Response(status_code=499)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, "internal server error (details are in the server log)", kind="server_error")

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", None,
                           "authentication_error")

    async def model_call(coro: Any) -> Any:
        try:
            return await coro
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        except PromptTooLong as exc:
            raise ApiError(413, str(exc), "messages") from None
        except BackendError as exc:
            log.warning("model call failed: %s", exc)
            raise ApiError(500, f"model call failed: {str(exc)[:300]}", None, "server_error") from None

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": settings.model_name,
            "uptime_s": round(time.time() - started, 1),
            "queued": batcher.queued,
            "requests": dict(counters.requests),
            **batcher.stats.as_dict(),
            **gate.as_dict(),
        }

    async def in_worker(work: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(decoders, work)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {"object": "list", "data": [
            {"id": settings.model_name, "object": "model", "created": int(started), "owned_by": "deepfakejudge",
             **weights}
        ]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        authorize(request)
        body = await read_body(request, settings)
        ticket = Ticket(gate, settings.admission_wait_s)

        async def work() -> dict[str, Any]:
            call = await in_worker(lambda: parse_chat(parse_json(body), settings, ticket))
            counters.count("chat")
            generation = await model_call(batcher.generate(call.request, call.config))
            return completion_body(call, generation, settings.model_name)

        try:
            return await unless_gone(request, work())
        finally:
            ticket.close()  # the decoded image's pixels go back to the gate

    async def judge_fields(request: Request, body: bytes, ticket: Ticket) -> tuple[dict[str, Any], DecodedImage]:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            return await _form_fields(request, body, settings, ticket, in_worker)
        return await in_worker(lambda: _json_fields(body, settings, ticket))

    async def run_judge(request: Request, kind: str, data: dict[str, Any], image: DecodedImage) -> dict[str, Any]:
        label = data.get("label")
        if label not in LABELS:
            raise ApiError(400, f"label must be one of {', '.join(LABELS)}", "label")
        mode = data.get("mode") or "generate"
        if mode not in MODES:
            raise ApiError(400, f"mode must be one of {', '.join(MODES)}", "mode")
        names = ("response",) if kind == "pointwise" else ("response_a", "response_b")
        texts = {}
        for name in names:
            value = data.get(name)
            if not isinstance(value, str) or not value.strip():
                raise ApiError(400, f"{name} must be a non-empty string", name)
            texts[name] = value
        if sum(len(t) for t in texts.values()) > settings.max_text_chars:
            raise ApiError(413, f"responses exceed the limit of {settings.max_text_chars} characters (--max-text-chars)")
        max_new = data.get("max_new_tokens", MAX_NEW_TOKENS[kind])
        if isinstance(max_new, bool) or not isinstance(max_new, int) or not 1 <= max_new <= settings.max_new_tokens:
            raise ApiError(400, f"max_new_tokens must be an integer from 1 to {settings.max_new_tokens} (--max-new-tokens)",
                           "max_new_tokens")
        both = data.get("both_orders", True)
        if not isinstance(both, bool):
            raise ApiError(400, "both_orders must be true or false", "both_orders")
        # The image is judged as decoded: no temporary file, no second decode.
        sample = Sample(id=str(data.get("id") or "request"), image=Path("image"), label=label, where="request", **texts)
        item = Prepared(sample, LoadedImage(image.image, image.sha256))
        proxy = BatchedBackend(batcher)
        common = {"template": templates[kind], "mode": mode, "generation": GenerationConfig(max_new_tokens=max_new),
                  "max_image_pixels": settings.max_image_pixels}
        if kind == "pointwise":
            work = lambda: PointwiseJudge(proxy, **common).judge_prepared([item])
        else:
            work = lambda: PairwiseJudge(proxy, **common).judge_prepared([item], both_orders=both)
        try:
            (verdict,) = await unless_gone(
                request, asyncio.get_running_loop().run_in_executor(judge_threads, work), on_gone=proxy.cancel)
        except ValueError as exc:  # a request the model cannot take (the processor said why)
            raise ApiError(400, str(exc)) from None
        if isinstance(verdict, RowError):
            message = verdict.message
            status = 500 if verdict.field == MODEL_ERROR_FIELD else 400
            raise ApiError(status, message, None if verdict.field == MODEL_ERROR_FIELD else verdict.field,
                           "server_error" if status == 500 else "invalid_request_error")
        row = verdict_row(verdict)
        return {**row, "model": settings.model_name, "mode": mode, "template_sha256": templates[kind].sha256}

    async def judge_route(request: Request, kind: str) -> dict[str, Any]:
        authorize(request)
        ticket = Ticket(gate, settings.admission_wait_s)
        try:
            body = await read_body(request, settings)  # before watching for a disconnect: both read the connection
            data, image = await unless_gone(request, judge_fields(request, body, ticket))
            counters.count(f"judge_{kind}")
            return await run_judge(request, kind, data, image)
        finally:
            ticket.close()

    @app.post("/v1/judge/pointwise")
    async def judge_pointwise(request: Request) -> dict[str, Any]:
        return await judge_route(request, "pointwise")

    @app.post("/v1/judge/pairwise")
    async def judge_pairwise(request: Request) -> dict[str, Any]:
        return await judge_route(request, "pairwise")

    app.state.batcher = batcher
    return app


async def unless_gone(request: Request, work: Any, on_gone: Any = None) -> Any:
    """Await `work` unless the client disconnects first: then it is cancelled (with `on_gone`
    for work running in a thread) and `ClientGone` raised. The request body must have been read
    (after it, the only message a connection can send is its disconnect)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        gone.cancel()
    if task in done:
        return task.result()
    task.cancel()
    if on_gone is not None:
        on_gone()
    raise ClientGone()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _json_fields(body: bytes, settings: ServeSettings, ticket: Ticket) -> tuple[dict[str, Any], DecodedImage]:
    data = parse_json(body)
    if (data.get("image") is None) == (data.get("image_path") is None):
        raise ApiError(400, "give the image as 'image' (base64 or a data URL) or as 'image_path' (under "
                            "--allowed-root), exactly one", "image")
    if data.get("image") is not None:
        return data, image_from_source(data["image"], settings, "image", bare_base64=True, ticket=ticket)
    path = data["image_path"]
    if not isinstance(path, str) or path.startswith(("data:", "http://", "https://")):
        raise ApiError(400, "image_path must be a local path", "image_path")
    return data, image_from_source(path, settings, "image_path", ticket=ticket)


async def _form_fields(request: Request, body: bytes, settings: ServeSettings, ticket: Ticket,
                       in_worker: Any) -> tuple[dict[str, Any], DecodedImage]:
    """Multipart fields from an already bounded body: text fields, and `image` as a file."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.request", "body": b"", "more_body": False}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_part_size=settings.max_body_bytes)
    except Exception:  # noqa: BLE001 - python-multipart's errors: a malformed upload
        raise ApiError(400, "malformed multipart body") from None
    data: dict[str, Any] = {}
    image = None
    for key, value in form.multi_items():
        if key == "image" and isinstance(value, UploadFile):
            data_bytes = await value.read()
            image = await in_worker(lambda data_bytes=data_bytes: decode_image(data_bytes, settings, "image", ticket))
        elif isinstance(value, str):
            data[key] = value
    if "both_orders" in data:
        data["both_orders"] = data["both_orders"].lower() in ("1", "true", "yes")
    if "max_new_tokens" in data:
        if not data["max_new_tokens"].isdigit():
            raise ApiError(400, "max_new_tokens must be an integer", "max_new_tokens")
        data["max_new_tokens"] = int(data["max_new_tokens"])
    if image is None:
        if "image" in data:
            source = data.pop("image")
            image = await in_worker(lambda: image_from_source(source, settings, "image", bare_base64=True, ticket=ticket))
        elif "image_path" in data:
            image = await in_worker(lambda: image_from_source(data["image_path"], settings, "image_path", ticket=ticket))
        else:
            raise ApiError(400, "upload the image as the file field 'image'", "image")
    return data, image
