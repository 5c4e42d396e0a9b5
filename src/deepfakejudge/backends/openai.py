"""OpenAI-compatible HTTP backend: vLLM, SGLang, `dfj serve`, OpenAI, Gemini, Ollama.

One chat completion per request: the image goes as a base64 data URL, then the text. By default
(`--image-transport png`) the image is resized first to the pixel budget with Qwen's rule and
sent as lossless PNG, so a Qwen server sees exactly the pixels the local backend would feed the
model (the rule: `resize.py`); `--image-transport original` sends the file's own bytes for a
server that resizes with the same budget itself. Each image is prepared once per run, in worker
processes, never on the event loop (`image_payload.py`). Requests run concurrently, with
retries, on one server or a pool of replicas (`http.py`: what happens when retries run out); the
message format, prefill servers and log-prob reading are `openai_protocol.py`. This module holds
the backend: what each request asks for and what the run does with the answers.

Log-probs: `generate` asks for `logprobs`/`top_logprobs` and fills `Generation.steps` when the
server returns them and their tokens rebuild the text; otherwise steps stay empty (the judges
then report parsed scores without probabilities) and a one-line notice says so.
`choice_probs` sends the prefix as a final assistant message that the server continues
(`continue_final_message`, as vLLM, SGLang and `dfj serve` support) and reads the first token's
`top_logprobs`; a server that refuses those log-probs (`--top-logprobs` over its limit) gives
every such request the same `BackendError` naming `--top-logprobs`, so each row of a run is an
answer or an error row, never a silent "no probability". Servers that cannot continue a message
(OpenAI, Gemini, Ollama) get `capabilities.choice_probs=False`. The response's `usage` (prompt
and completion tokens) is kept on each `Generation` where the server sends it. The API key is
kept only in the transport's request headers: it is never written to results, logs or caches.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx

from ..errors import UsageError
from .base import (
    Backend,
    BackendError,
    BackendUnavailable,
    Capabilities,
    ChatRequest,
    Generation,
    GenerationConfig,
    LoadOptions,
    TokenStep,
    raise_failures,
)
from .budget import PIXELS_PER_TOKEN, REMOTE_DEFAULT_LIMIT, PromptBudget
from .http import HttpTransport, backoff_delay, retry_after_seconds
from .image_payload import ImagePreparer, encode_image
from .openai_protocol import (
    PREFILL_SERVERS,
    chat_messages,
    heal_split,
    pieces_from_bytes,
    steps_from_logprobs,
    usage_count,
)
from .resize import smart_resize

# The names tests, benchmarks and callers import from here, wherever they now live.
__all__ = [
    "PREFILL_SERVERS", "OpenAIBackend", "backoff_delay", "encode_image", "heal_split", "pieces_from_bytes",
    "retry_after_seconds", "smart_resize", "steps_from_logprobs",
]

log = logging.getLogger("deepfakejudge.backends.openai")
# What a /v1/models entry says of the weights behind a model name (part of `describe()`, hence of
# the request cache's key); `created` and `max_model_len` change no answer. `dfj_fingerprint`:
# `dfj serve`'s digest of the checkpoint's files (serve/app.py).
WEIGHTS_FIELDS = ("root", "parent", "dfj_fingerprint")


class OpenAIBackend(Backend):
    """Chat completions on an OpenAI-compatible server (`--backend openai --base-url URL`)."""

    name = "openai"
    streams_results = True  # `*_each` take `on_result`: each answer is reported as it arrives
    http_class = HttpTransport  # how requests travel (a benchmark swaps in the client it replaced)

    def __init__(self, options: LoadOptions, transport: httpx.AsyncBaseTransport | None = None) -> None:
        remote = options.remote
        urls = remote.base_urls
        if not urls or not all(urls):
            raise UsageError(
                "--base-url is required with --backend openai, e.g. http://127.0.0.1:8000/v1 "
                "(vLLM, SGLang, dfj serve) or https://api.openai.com/v1"
            )
        if options.adapter is not None:
            raise UsageError(
                "--adapter: the openai backend cannot apply a local adapter; serve it on the server "
                "(vllm serve BASE --enable-lora --lora-modules NAME=DIR) and pass --model NAME"
            )
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise UsageError(f"--base-url must start with http:// or https://, got {url!r}")
        self.options = options
        self.remote = remote
        urls = tuple(url.rstrip("/") for url in urls)
        self.budget = options.budget
        # Data URLs, prepared once per image in worker processes and shared by every backend of
        # the process (pairs, detectors and bootstrap's roles share images).
        self._prepare = ImagePreparer(self.budget, remote.image_transport, remote.image_workers)
        self._notices: set[str] = set()
        self._send_logprobs = True
        self._choice_refusal: str | None = None  # why choice probabilities cannot be read here
        self._http = self.http_class(urls, remote, transport)
        self.base_url = self._http.base_url
        self._pool = self._http.pool  # None with one server
        try:
            self.server, self.weights = self._http.run(self._served_model())
        except BaseException:
            self.close()
            raise
        if remote.prefill == "on":
            self._prefill_body = PREFILL_SERVERS.get(self.server, PREFILL_SERVERS["vllm"])
        elif remote.prefill == "auto":
            self._prefill_body = PREFILL_SERVERS.get(self.server)
        else:
            self._prefill_body = None
        self.capabilities = Capabilities(logprobs=True, choice_probs=self._prefill_body is not None)
        # No tokenizer here: only prompts certainly over the limit are refused (the server counts).
        self.prompt_budget = PromptBudget(options.max_prompt_tokens or REMOTE_DEFAULT_LIMIT,
                                          image_tokens=options.budget.max_pixels // PIXELS_PER_TOKEN)
        if self._prefill_body is None:
            self._notice(
                "prefill",
                f"notice: the server at {self.base_url} ({self.server}) is not known to continue a "
                "prefilled assistant message: choice probabilities (--mode score-only) are off; generate "
                "mode reads probabilities from logprobs where the server returns them (--prefill on to force)",
            )

    def _notice(self, key: str, message: str) -> None:
        if key not in self._notices:
            self._notices.add(key)
            log.warning(message)

    # -- protocol --------------------------------------------------------------------------------

    async def _served_model(self) -> tuple[str, dict[str, str] | None]:
        """(server kind, weights) from this model's entry in /v1/models. The kind is its `owned_by`
        ("vllm", "sglang", "deepfakejudge", "openai", ...; the first entry's where none has the
        model's id, "unknown" where the server lists none); the weights are the entry's
        `WEIGHTS_FIELDS` where it lists them (vLLM, SGLang, `dfj serve`: the checkpoint's path or
        hub id, a LoRA module's base model, `dfj serve`'s digest), else None. With a pool, the
        first server that answers says."""
        try:
            data = await self._http.call("GET", "/models", None, missing_ok=True)
        except BackendError:
            return "unknown", None
        models = data.get("data") if isinstance(data, dict) else None
        if not isinstance(models, list) or not models:
            return "unknown", None
        own = next((m for m in models if isinstance(m, dict) and m.get("id") == self.options.model), None)
        entry = own or models[0]
        kind = str(entry.get("owned_by") or "unknown") if isinstance(entry, dict) else "unknown"
        # Another model's entry says nothing of these weights.
        weights = {k: str(own[k]) for k in WEIGHTS_FIELDS if own.get(k)} if own else {}
        return kind, weights or None

    # -- requests --------------------------------------------------------------------------------

    async def _image_url(self, request: ChatRequest) -> bytes | None:
        """The request's image as a data URL (ASCII bytes, spliced into the body by `json_body`),
        awaited while the image is prepared elsewhere; a failure is this request's BackendError."""
        if request.image is None:
            return None
        prepared = self._prepare.url(request)
        try:
            # Shielded: several requests wait on one preparation, and a cancelled wait must not
            # cancel it for the others.
            return await asyncio.shield(asyncio.wrap_future(prepared))
        except asyncio.CancelledError:
            if prepared.cancelled():  # the workers were stopped, not this request
                raise BackendError("image: its preparation was cancelled (the image workers stopped)") from None
            raise
        except Exception as exc:  # noqa: BLE001 - whatever preparing this image raised costs its row only
            raise BackendError(f"image: cannot prepare it for sending ({type(exc).__name__}: {exc})") from None

    def _payload(self, request: ChatRequest, prefix: str, max_tokens: int, temperature: float,
                 seed: int, top_logprobs: int, image_url: bytes | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.options.model,
            "messages": chat_messages(request, prefix, image_url),
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if temperature > 0:  # greedy needs no seed, and not every API takes one
            payload["seed"] = seed
        if self._send_logprobs and top_logprobs > 0:
            payload.update(logprobs=True, top_logprobs=top_logprobs)
        if prefix:
            if self._prefill_body is None:
                raise UsageError(
                    f"request prefix: the server at {self.base_url} ({self.server}) cannot continue a "
                    "prefilled assistant message; use --mode generate, or --prefill on if it can"
                )
            payload.update(self._prefill_body)
        return payload

    async def _complete(self, payload: dict[str, Any], degrade: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
        """(choices[0], usage) of one chat completion; usage is {} where the server sends none.
        A refusal of the log-probs is answered without them when `degrade` (text generation can
        do without); otherwise it is this request's `BackendError`."""
        try:
            data = await self._http.call("POST", "/chat/completions", payload)
        except BackendError as exc:
            if "logprobs" in payload and "logprob" in str(exc).lower() and "HTTP 400" in str(exc):
                if not degrade:
                    # Remembered: the run's other requests get the same error without a call.
                    self._choice_refusal = self._logprobs_refused(payload, str(exc))
                    raise BackendError(self._choice_refusal) from None
                # The server refuses log-probs (some hosted APIs): ask again without them.
                self._send_logprobs = False
                self._notice("no-logprobs", f"notice: {self.base_url} refuses logprobs ({exc}); "
                             "scores are parsed from text, probabilities are null")
                payload = {k: v for k, v in payload.items() if k not in ("logprobs", "top_logprobs")}
                data = await self._http.call("POST", "/chat/completions", payload)
            else:
                raise
        try:
            choice = data["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"response has no choices[0]: {json.dumps(data)[:200]}") from None
        usage = data.get("usage")
        return choice, usage if isinstance(usage, dict) else {}

    def _logprobs_refused(self, payload: dict[str, Any], why: str) -> str:
        asked = f"--top-logprobs {payload['top_logprobs']}" if "top_logprobs" in payload else "--top-logprobs"
        return (f"{asked}: the server at {self.base_url} refuses these logprobs ({why}); choice probabilities "
                "(--mode score-only) need them: set --top-logprobs to at most the server's limit (vLLM and dfj "
                "serve: their --max-logprobs) and rerun with --retry-errors, or use --mode generate")

    async def _generate_one(self, request: ChatRequest, config: GenerationConfig) -> Generation:
        payload = self._payload(request, request.prefix, config.max_new_tokens, config.temperature,
                                config.seed, config.top_logprobs, await self._image_url(request))
        choice, usage = await self._complete(payload)
        message = choice.get("message") or {}
        text = message.get("content")
        if text is not None and not isinstance(text, str):
            raise BackendError(f"response content is not text: {str(text)[:200]}")
        if not text or not text.strip():
            # An empty or null reply is a failed call (an error row that --retry-errors asks
            # again), never an answer: cached as one, it would never be asked again.
            raise BackendError(f"the server returned empty content (finish_reason "
                               f"{choice.get('finish_reason')!r}); rerun with --retry-errors to ask again")
        entries = (choice.get("logprobs") or {}).get("content") or []
        steps: tuple[TokenStep, ...] = ()
        if "logprobs" in payload and text:
            try:
                rebuilt = steps_from_logprobs(text, entries) if entries else None
            except (KeyError, TypeError, ValueError, AttributeError):  # malformed logprobs: none, not a crash
                rebuilt = None
            if rebuilt is None:
                self._notice("no-steps", f"notice: {self.base_url} returned no usable logprobs (none, or "
                             "tokens that do not rebuild the text): probabilities are null, scores parsed from text")
            else:
                steps = rebuilt
        return Generation(text=text, steps=steps, finish_reason=choice.get("finish_reason"),
                          prompt_tokens=usage_count(usage, "prompt_tokens"),
                          completion_tokens=usage_count(usage, "completion_tokens"))

    async def _next_token(self, request: ChatRequest, context: str) -> dict[str, float]:
        """Probability of each token the server lists at the first position after `context`.

        Every request of a run must get the same treatment: a refusal of the log-probs is an
        error for each request (an error row that --retry-errors asks again), never an answer
        without them, which would read as "no probability on any choice"."""
        if self._choice_refusal is not None:  # refused before: the same answer without a call
            raise BackendError(self._choice_refusal)
        payload = self._payload(request, context, 1, 0.0, 0, self.remote.top_logprobs,
                                await self._image_url(request))
        if "logprobs" not in payload:
            raise BackendError(self._logprobs_refused(payload, "an earlier request was refused them"))
        choice, _ = await self._complete(payload, degrade=False)
        entries = (choice.get("logprobs") or {}).get("content") or []
        if not entries:  # nothing to read a probability from: a failed call, not "no mass"
            raise BackendError("the server returned no logprobs for the next token; rerun with --retry-errors")
        first = entries[0]
        probs: dict[str, float] = {}
        for token, logprob in [(first.get("token"), first.get("logprob")),
                               *((t.get("token"), t.get("logprob")) for t in first.get("top_logprobs") or ())]:
            if isinstance(token, str) and isinstance(logprob, (int, float)):
                probs[token] = max(probs.get(token, 0.0), math.exp(logprob))
        return probs

    async def _choice_one(self, request: ChatRequest, choices: Sequence[str]) -> dict[str, float]:
        context, head = heal_split(request.prefix, choices)
        top = await self._next_token(request, context)
        probs = {c: top.get(head + c, 0.0) for c in choices}
        if head and not any(probs.values()) and top.get(head, 0.0) > 0.0:
            # This tokenizer keeps the punctuation apart: P(head) * P(choice | prefix).
            after = await self._next_token(request, request.prefix)
            probs = {c: top[head] * after.get(c, 0.0) for c in choices}
        return probs

    def _run_each(self, requests: Sequence[ChatRequest], one: Callable[[ChatRequest], Awaitable[Any]],
                  on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        async def guarded(i: int, request: ChatRequest) -> Any:
            over = self.over_budget(request)
            if over is not None:  # never sent: see backends/budget.py
                return over
            try:
                result = await one(request)
            except (BackendError, BackendUnavailable) as exc:
                return exc
            if on_result is not None:  # as each answer arrives (the request cache writes it now)
                on_result(i, result)
            return result

        async def gather() -> list[Any]:
            return await asyncio.gather(*(guarded(i, r) for i, r in enumerate(requests)))

        results = self._http.run(gather()) if requests else []
        down = [r for r in results if isinstance(r, BackendUnavailable)]
        if down:
            partial = [None if isinstance(r, Exception) else r for r in results]
            raise BackendUnavailable(str(down[0]), partial=partial)
        return results

    # -- Backend ---------------------------------------------------------------------------------

    def generate_each(self, requests: Sequence[ChatRequest], config: GenerationConfig,
                      on_result: Callable[[int, Any], None] | None = None) -> list[Generation | BackendError]:
        if config.max_new_tokens < 1:
            raise UsageError(f"max_new_tokens: must be >= 1, got {config.max_new_tokens}")
        if config.temperature < 0:
            raise UsageError(f"temperature: must be >= 0, got {config.temperature}")
        if self._prefill_body is None and any(r.prefix for r in requests):
            raise UsageError(
                f"request prefix: the server at {self.base_url} ({self.server}) cannot continue a "
                "prefilled assistant message; use --mode generate, or --prefill on if it can"
            )
        return self._run_each(requests, lambda r: self._generate_one(r, config), on_result)

    def generate(self, requests: Sequence[ChatRequest], config: GenerationConfig) -> list[Generation]:
        return raise_failures(self.generate_each(requests, config))

    def choice_probs_each(self, requests: Sequence[ChatRequest], choices: Sequence[str],
                          on_result: Callable[[int, Any], None] | None = None) -> list[dict[str, float] | BackendError]:
        if not choices or any(not c for c in choices) or len(set(choices)) != len(choices):
            raise ValueError(f"choices: need distinct non-empty strings, got {list(choices)}")
        if not self.capabilities.choice_probs:
            raise UsageError(
                f"--mode score-only: the server at {self.base_url} ({self.server}) is not known to continue a "
                "prefilled assistant message, which reading choice probabilities needs; use --mode generate "
                "(scores parsed from text, probabilities from logprobs where returned), or --prefill on"
            )
        return self._run_each(requests, lambda r: self._choice_one(r, choices), on_result)

    def choice_probs(self, requests: Sequence[ChatRequest], choices: Sequence[str]) -> list[dict[str, float]]:
        return raise_failures(self.choice_probs_each(requests, choices))

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.options.model,
            "base_url": self.base_url,
            "server": self.server,
            "weights": self.weights,
            "prefill": self._prefill_body is not None,
            "top_logprobs": self.remote.top_logprobs,
            "min_pixels": self.budget.min_pixels,
            "max_pixels": self.budget.max_pixels,
            # The transport that ran (a cached answer is only reused for the same one): "png",
            # resized here; "original", the file's bytes, resized by the server.
            "image_format": self._prepare.transport,
            # Where the answers came from (provenance): the request cache leaves the servers out of
            # its key, as the model, server kind and weights say what answered (cache.py).
            **({} if self._pool is None else {"base_url": self._pool.urls, "replicas": self._pool.counts()}),
        }

    def close(self) -> None:
        http = getattr(self, "_http", None)
        if http is not None:
            http.close()
