"""Reading what clients send: bounded bodies, images (base64, data URL or an allowed local path)
and OpenAI chat completion requests, each problem an `ApiError` naming the field or the limit."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from starlette.requests import ClientDisconnect

from ..backends.base import ChatRequest, GenerationConfig
from ..data.images import ImageTooLarge, ImageUnreadable, decode_bytes, pil_pixel_limit
from .admission import Ticket
from .settings import ApiError, ServeSettings

DEFAULT_MAX_TOKENS = 512
# Accepted and ignored only at these values: anything else would change the answer silently.
NEUTRAL = {"top_p": (None, 1, 1.0), "frequency_penalty": (None, 0, 0.0), "presence_penalty": (None, 0, 0.0),
           "n": (None, 1), "stream": (None, False), "stop": (None, [], ""), "logit_bias": (None, {}),
           "tools": (None, []), "response_format": (None, {"type": "text"})}


class ClientGone(Exception):
    """The client disconnected (mid-body, or while its request waited): nothing to answer."""


async def read_body(request: Any, settings: ServeSettings) -> bytes:
    """The request body, refusing (413) more than --max-body-bytes before reading it all, and
    (408) a body that does not arrive within --body-timeout seconds (a slow client would hold
    a connection and its buffer for as long as it likes)."""
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes (--max-body-bytes)")

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body exceeds the limit of {limit} bytes (--max-body-bytes)")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), settings.body_timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(408, f"request body not received within {settings.body_timeout_s:g} s (--body-timeout)") from None
    except ClientDisconnect:
        raise ClientGone() from None


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    return data


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, fully decoded (the encoded bytes are not kept)
    sha256: str  # of the encoded bytes: the image's content key


def decode_image(data: bytes, settings: ServeSettings, param: str, ticket: Ticket | None = None) -> DecodedImage:
    """Decode image bytes, refusing (413) images over --max-image-pixels before decoding them.
    With a `ticket`, the image's pixels are taken from the server's admission gate first (may
    wait, or refuse with 503)."""
    if ticket is not None:
        pixels = header_pixels(data, settings.max_image_pixels)
        if pixels is not None and pixels <= settings.max_image_pixels:
            ticket.take(pixels, param)
    try:
        rgb = decode_bytes(data, settings.max_image_pixels)
    except ImageTooLarge as exc:
        raise ApiError(413, f"image: {exc} (--max-image-pixels)", param) from None
    except ImageUnreadable as exc:
        raise ApiError(400, f"image: {exc}", param) from None
    return DecodedImage(rgb, hashlib.sha256(data).hexdigest())


def header_pixels(data: bytes, limit: int) -> int | None:
    """width x height from the image's header, without decoding it; None if unreadable (the
    decoder then says why)."""
    try:
        with warnings.catch_warnings(), pil_pixel_limit(limit):
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except Exception:  # noqa: BLE001 - any failure is reported by the decoder itself
        return None
    return width * height


def _b64(text: str, param: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "image is not valid base64", param) from None


def local_image_bytes(path_text: str, settings: ServeSettings, param: str) -> bytes:
    """Bytes of a local image, only from under --allowed-root (403 otherwise, whatever exists)."""
    root = settings.allowed_root
    if root is None:
        raise ApiError(403, "local image paths are refused: start the server with --allowed-root DIR to allow "
                            "paths under DIR, or send the image as base64", param, "permission_error")
    path = Path(path_text).expanduser()
    real_root = os.path.realpath(root)
    real = os.path.realpath(path if path.is_absolute() else Path(root) / path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise ApiError(403, "image path is outside --allowed-root", param, "permission_error")
    try:
        return Path(real).read_bytes()
    except FileNotFoundError:
        raise ApiError(400, "image file not found under --allowed-root", param) from None
    except OSError:
        raise ApiError(400, "image file cannot be read", param) from None


def image_from_source(source: Any, settings: ServeSettings, param: str, bare_base64: bool = False,
                      ticket: Ticket | None = None) -> DecodedImage:
    """An image from a data URL, a `file://` URL or path (under --allowed-root), or with
    `bare_base64` plain base64 text."""
    if not isinstance(source, str) or not source:
        raise ApiError(400, "image must be a non-empty string", param)
    if source.startswith("data:"):
        head, _, payload = source.partition(",")
        if not head.endswith(";base64"):
            raise ApiError(400, "image data URL must be base64 (data:image/png;base64,...)", param)
        return decode_image(_b64(payload, param), settings, param, ticket)
    if source.startswith(("http://", "https://")):
        raise ApiError(400, "remote image URLs are not fetched by this server; send the image as a base64 data URL", param)
    if source.startswith("file://"):
        return decode_image(local_image_bytes(source[len("file://"):], settings, param), settings, param, ticket)
    if bare_base64:
        return decode_image(_b64(source, param), settings, param, ticket)
    return decode_image(local_image_bytes(source, settings, param), settings, param, ticket)


@dataclass(frozen=True)
class ChatCall:
    """One chat completion request, ready for the backend."""

    request: ChatRequest
    config: GenerationConfig
    logprobs: bool
    top_logprobs: int


def _int(data: dict[str, Any], name: str, default: int, low: int, high: int, flag: str | None = None) -> int:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{name} must be an integer", name)
    if value < low or value > high:
        limit = f" (the server's {flag})" if flag and value > high else ""
        raise ApiError(400, f"{name} must be between {low} and {high}{limit}, got {value}", name)
    return value


def _text_parts(content: Any, param: str, settings: ServeSettings,
                ticket: Ticket | None = None) -> tuple[str, DecodedImage | None]:
    if isinstance(content, str):
        return content, None
    if not isinstance(content, list):
        raise ApiError(400, "content must be a string or a list of parts", param)
    texts: list[str] = []
    image = None
    for i, part in enumerate(content):
        where = f"{param}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ApiError(400, "text part needs a string 'text'", where)
            texts.append(part["text"])
        elif kind == "image_url":
            if image is not None:
                raise ApiError(400, "one image per request: the judge reads a single image", where)
            if texts:
                raise ApiError(400, "the image must come before the text (the judges were trained so)", where)
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            image = image_from_source(url, settings, where + ".image_url.url", ticket=ticket)
        else:
            raise ApiError(400, f"unsupported content part type {kind!r} (use 'text' or 'image_url')", where)
    return "".join(texts), image


def parse_chat(data: dict[str, Any], settings: ServeSettings, ticket: Ticket | None = None) -> ChatCall:
    model = data.get("model")
    if model != settings.model_name:
        raise ApiError(404, f"model {model!r} is not served here; this server serves {settings.model_name!r}",
                       "model", "model_not_found")
    for name, allowed in NEUTRAL.items():
        if data.get(name) not in allowed:
            raise ApiError(400, f"{name}={data.get(name)!r} is not supported by dfj serve", name)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ApiError(400, "messages must be a non-empty list of message objects", "messages")
    roles = [m.get("role") for m in messages]
    continue_final = bool(data.get("continue_final_message")) or data.get("add_generation_prompt") is False
    if roles == ["user"]:
        prefix_message = None
    elif roles == ["user", "assistant"]:
        if not continue_final:
            raise ApiError(400, "a final assistant message is only taken as a prefix to continue: set "
                                "continue_final_message=true (and add_generation_prompt=false)", "messages")
        prefix_message = messages[1]
    else:
        raise ApiError(400, "messages must be one user message, optionally followed by an assistant prefix "
                            f"(got roles {roles}); the judge uses the default system prompt", "messages")
    text, image = _text_parts(messages[0].get("content"), "messages[0].content", settings, ticket)
    prefix = ""
    if prefix_message is not None:
        prefix, extra = _text_parts(prefix_message.get("content"), "messages[1].content", settings)
        if extra is not None:
            raise ApiError(400, "the assistant prefix cannot hold an image", "messages[1].content")
    if len(text) + len(prefix) > settings.max_text_chars:
        raise ApiError(413, f"text of {len(text) + len(prefix)} characters exceeds the limit of "
                            f"{settings.max_text_chars} (--max-text-chars)", "messages")
    if not text.strip():
        raise ApiError(400, "the user message has no text", "messages[0].content")
    if data.get("max_tokens") is not None and data.get("max_completion_tokens") is not None:
        raise ApiError(400, "give max_tokens or max_completion_tokens, not both", "max_tokens")
    key = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _int(data, key, min(DEFAULT_MAX_TOKENS, settings.max_new_tokens), 1, settings.max_new_tokens,
                      "--max-new-tokens")
    temperature = data.get("temperature", 0.0)
    if temperature is None:
        temperature = 0.0
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise ApiError(400, "temperature must be a number between 0 and 2", "temperature")
    seed = _int(data, "seed", 0, -(2**63), 2**63 - 1)
    logprobs = data.get("logprobs") or False
    if not isinstance(logprobs, bool):
        raise ApiError(400, "logprobs must be true or false", "logprobs")
    top = _int(data, "top_logprobs", 0, 0, settings.max_logprobs, "--max-logprobs")
    if top and not logprobs:
        raise ApiError(400, "top_logprobs needs logprobs=true", "top_logprobs")
    request = ChatRequest(text=text, image=image.image if image else None, prefix=prefix,
                          image_key=image.sha256 if image else None)
    config = GenerationConfig(max_new_tokens=max_tokens, temperature=float(temperature), top_logprobs=top, seed=seed)
    return ChatCall(request=request, config=config, logprobs=logprobs, top_logprobs=top)
