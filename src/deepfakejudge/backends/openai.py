"""OpenAI-compatible HTTP backend: vLLM, SGLang, `dfj serve`, OpenAI, Gemini, Ollama.

One chat completion per request: the image goes as a base64 data URL, then the text. By default
(`--image-transport png`) the image is resized first to the pixel budget with Qwen's rule and
sent as lossless PNG, so a Qwen server sees exactly the pixels the local backend would feed the
model; `--image-transport original` sends the file's own bytes for a server that resizes with
the same budget itself. Each image is prepared once per run, in worker processes, never on the
event loop (`image_payload.py`). Requests run concurrently on an asyncio loop in a background
thread, at most `concurrency` in flight; 429, 5xx, timeouts and dropped connections are retried
with exponential backoff and jitter, honouring Retry-After. What happens when retries run out:

- a timeout or a 5xx: that request's `BackendError`, so one error row;
- connection refused / dropped, or a 429 that never lifts: `BackendUnavailable`, which stops
  the run (a rerun resumes it) rather than writing an error row for every remaining item;
- 401/403 (the key) or 404 (the model or the URL): `ValueError` naming the option to fix.

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
read from an environment variable at start and kept only in the request headers: it is never
written to results, logs or caches.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx
from PIL import Image

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
    PixelBudget,
    TokenStep,
    raise_failures,
)
from .budget import PIXELS_PER_TOKEN, REMOTE_DEFAULT_LIMIT, PromptBudget
from .image_payload import ImagePreparer, json_body, png_data_url
from .replicas import Replica, ReplicaPool
from .resize import FACTOR, qwen_resize

log = logging.getLogger("deepfakejudge.backends.openai")

# `owned_by` in /v1/models of servers that continue a final assistant message, and the extra
# body each takes for it (vLLM refuses continue_final_message together with its default
# add_generation_prompt=true; SGLang has no add_generation_prompt field).
PREFILL_SERVERS: dict[str, dict[str, Any]] = {
    "vllm": {"continue_final_message": True, "add_generation_prompt": False},
    "sglang": {"continue_final_message": True},
    "deepfakejudge": {"continue_final_message": True, "add_generation_prompt": False},
}
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 120.0  # seconds


def smart_resize(height: int, width: int, budget: PixelBudget, factor: int = FACTOR) -> tuple[int, int]:
    """(height, width) rounded to multiples of `factor` with the pixel count inside the budget,
    aspect ratio kept as closely as possible: the project's one Qwen rule (`resize.qwen_resize`)."""
    return qwen_resize(height, width, budget.min_pixels, budget.max_pixels, factor)


def encode_image(image: Image.Image, budget: PixelBudget) -> str:
    """A PNG data URL of `image` resized (bicubic, as Qwen's image processor) to the budget."""
    return png_data_url(image, budget).decode("ascii")


def heal_split(prefix: str, choices: Sequence[str]) -> tuple[str, str]:
    """(context to send, head the choice tokens start with).

    Qwen-style pre-tokenisers glue one punctuation character onto the letters after it (">A",
    " real"), so after `<answer>` the model wrote ">A" as one token. Sending the prefix without
    that character and reading the tokens ">A"/">B" asks the question the model was trained on.
    Digits are never glued, so `<score>` is sent whole.
    """
    if prefix and all(c[:1].isalpha() for c in choices):
        last = prefix[-1]
        if last not in "\r\n" and not last.isalnum():
            return prefix[:-1], last
    return prefix, ""


def pieces_from_bytes(chunks: Sequence[bytes]) -> list[str]:
    """Text per token from each token's UTF-8 bytes: a token that ends inside a character gets
    "" and the token that completes the character gets all of it."""
    pieces, pending = [], b""
    for chunk in chunks:
        pending += chunk
        try:
            pieces.append(pending.decode("utf-8"))
            pending = b""
        except UnicodeDecodeError:
            pieces.append("")
    if pending:
        pieces[-1] += pending.decode("utf-8", errors="replace")
    return pieces


def steps_from_logprobs(text: str, entries: Sequence[dict[str, Any]]) -> tuple[TokenStep, ...] | None:
    """TokenSteps from a chat completion's `logprobs.content`, or None when the tokens do not
    rebuild `text` (a server that trims, or returns special tokens): no offsets are guessed."""
    pieces = [str(e.get("token", "")) for e in entries]
    if "".join(pieces) != text and all(isinstance(e.get("bytes"), list) for e in entries):
        pieces = pieces_from_bytes([bytes(e["bytes"]) for e in entries])
    joined = "".join(pieces)
    if joined != text and joined.startswith(text):
        # A trailing stop token decoded as text ("<|im_end|>"): keep the steps that wrote `text`.
        total, keep = 0, 0
        while keep < len(pieces) and total < len(text):
            total += len(pieces[keep])
            keep += 1
        if total == len(text):
            entries, pieces = entries[:keep], pieces[:keep]
            joined = text
    if joined != text:
        return None
    steps, offset = [], 0
    for entry, piece in zip(entries, pieces):
        top = tuple((str(t.get("token", "")), float(t["logprob"])) for t in entry.get("top_logprobs") or ())
        steps.append(TokenStep(offset=offset, token=piece, logprob=float(entry["logprob"]), top=top))
        offset += len(piece)
    return tuple(steps)


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None, rng: random.Random) -> float:
    """Exponential backoff with jitter (a random half to all of min(cap, base * 2**attempt)),
    never shorter than the server's Retry-After, itself capped at MAX_RETRY_AFTER so that a
    server cannot park the run for hours."""
    delay = rng.uniform(0.5, 1.0) * min(cap, base * 2**attempt)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        return str(error.get("message") or error)[:300]
    return str(error)[:300]


def _count(usage: dict[str, Any], key: str) -> int | None:
    """A token count from a response's `usage`, or None where the server gives none."""
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class _Retryable(Exception):
    def __init__(self, kind: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # "connection" | "rate" | "timeout" | "server"
        self.retry_after = retry_after
        self.replica: Replica | None = None  # where it failed, with several servers


class _LoopThread:
    """An asyncio loop in a daemon thread: the backend's methods are synchronous (judges call
    them from plain code) and must work even when the caller already runs a loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="dfj-openai", daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            self.loop.close()


class OpenAIBackend(Backend):
    """Chat completions on an OpenAI-compatible server (`--backend openai --base-url URL`)."""

    name = "openai"
    streams_results = True  # `*_each` take `on_result`: each answer is reported as it arrives

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
        # Several URLs: a pool of replicas of one model (backends/replicas.py); one URL: no pool,
        # and every request goes where it always did.
        self._pool = (ReplicaPool(urls, self._probe, remote.backoff_base, remote.backoff_cap)
                      if len(urls) > 1 else None)
        self.base_url = urls[0] if self._pool is None else ", ".join(urls)
        self.budget = options.budget
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(remote.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._rng = random.Random(0)
        # Data URLs, prepared once per image in worker processes and shared by every backend of
        # the process (pairs, detectors and bootstrap's roles share images).
        self._prepare = ImagePreparer(self.budget, remote.image_transport, remote.image_workers)
        self._notices: set[str] = set()
        self._send_logprobs = True
        self._choice_refusal: str | None = None  # why choice probabilities cannot be read here
        self._runner = _LoopThread()
        self._client = self._runner.run(self._make_client(headers, transport))
        try:
            self.server = self._runner.run(self._server_kind())
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

    async def _make_client(self, headers: dict[str, str], transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
        # Created on the backend's loop, as is the queue of lanes that bounds requests in flight:
        # a request holds a lane (a client with one connection) while it is sent and answered.
        # Not one client with `concurrency` connections: httpcore scans every connection of its
        # pool for each request, ~3.5 ms of CPU per request at 32 against ~1 ms with a lane each
        # (benchmarks/remote_client.py). The queue, not a pool, does the waiting: time spent
        # waiting for a lane must not count against --timeout (pool=None), and retries wait
        # without holding one. One TLS context for all lanes (httpx makes one per client, even
        # for http://, loading the CA store each time: ~20 ms apiece).
        # With several servers a lane keeps one connection to each (it takes turns among them).
        servers = 1 if self._pool is None else len(self._pool.replicas)
        limits = httpx.Limits(max_connections=servers, max_keepalive_connections=servers)
        timeout = httpx.Timeout(self.remote.timeout, pool=None)
        verify = httpx.create_ssl_context()
        if self._pool is not None:  # health checks of replicas that are out: short, off the lanes
            self._prober = httpx.AsyncClient(headers=headers, timeout=min(self.remote.timeout, 10.0),
                                             transport=transport, verify=verify)
        self._all_lanes = [
            httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits, transport=transport, verify=verify)
            for _ in range(self.remote.concurrency)
        ]
        self._lanes: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
        for lane in self._all_lanes:
            self._lanes.put_nowait(lane)
        return self._all_lanes[0]

    def _notice(self, key: str, message: str) -> None:
        if key not in self._notices:
            self._notices.add(key)
            log.warning(message)

    # -- HTTP ------------------------------------------------------------------------------------

    async def _server_kind(self) -> str:
        """`owned_by` of the model in /v1/models ("vllm", "sglang", "deepfakejudge", "openai",
        ...), or "unknown" where the server lists none."""
        try:
            data = await self._call("GET", "/models", None, missing_ok=True)
        except BackendError:
            return "unknown"
        models = data.get("data") if isinstance(data, dict) else None
        if not isinstance(models, list) or not models:
            return "unknown"
        entry = next((m for m in models if isinstance(m, dict) and m.get("id") == self.options.model), models[0])
        return str(entry.get("owned_by") or "unknown") if isinstance(entry, dict) else "unknown"

    async def _call(
        self, method: str, path: str, payload: dict[str, Any] | None, missing_ok: bool = False
    ) -> dict[str, Any]:
        """One HTTP call with retries. Raises BackendError (this request), BackendUnavailable
        (the server) or ValueError (the configuration); a 404 gives {} when `missing_ok`."""
        if self._pool is not None:
            return await self._call_pool(method, path, payload, missing_ok)
        url = self.base_url + path
        last: _Retryable | None = None
        for attempt in range(self.remote.max_retries + 1):
            if attempt:
                delay = backoff_delay(
                    attempt - 1, self.remote.backoff_base, self.remote.backoff_cap, last.retry_after, self._rng
                )
                await asyncio.sleep(delay)
            try:
                return await self._attempt(method, url, payload, missing_ok)
            except _Retryable as exc:
                last = exc
        assert last is not None
        tries = self.remote.max_retries + 1
        if last.kind in ("connection", "rate"):
            raise BackendUnavailable(
                f"{self.base_url} unreachable after {tries} tries ({last}); check that the server is up "
                "(and not rate limiting), then rerun the same command to resume"
            )
        raise BackendError(f"{method} {path} failed after {tries} tries: {last}")

    async def _call_pool(
        self, method: str, path: str, payload: dict[str, Any] | None, missing_ok: bool
    ) -> dict[str, Any]:
        """`_call` over several servers: a try that fails on one goes at once to another that
        is in; the backoff is waited only while every server is out (or for a 429 from all)."""
        assert self._pool is not None
        counted = method == "POST"  # completions, not the start-up GET /models
        last: _Retryable | None = None
        for attempt in range(self.remote.max_retries + 1):
            if attempt and not self._pool.any_up():
                delay = backoff_delay(
                    attempt - 1, self.remote.backoff_base, self.remote.backoff_cap, last.retry_after, self._rng
                )
                await self._pool.wait_up(delay)
            try:
                return await self._attempt(method, path, payload, missing_ok, counted=counted)
            except _Retryable as exc:
                last = exc
                assert exc.replica is not None
                self._pool.failed(exc.replica, exc.retry_after, counted=counted)
        assert last is not None
        tries = self.remote.max_retries + 1
        if last.kind in ("connection", "rate"):
            raise BackendUnavailable(
                f"no server answered after {tries} tries (last, {last.replica.url}: {last}); servers: "
                f"{self.base_url}; check that they are up (and not rate limiting), then rerun the same command "
                "to resume"
            )
        raise BackendError(f"{method} {path} failed after {tries} tries (last at {last.replica.url}): {last}")

    async def _probe(self, url: str) -> bool:
        """Whether the server at `url` answers `GET /models` (a replica's health check): any
        answer but a 5xx or a 429 means it is up."""
        try:
            response = await self._prober.get(url + "/models")
        except httpx.HTTPError:
            return False
        return response.status_code < 500 and response.status_code != 429

    async def _attempt(
        self, method: str, url: str, payload: dict[str, Any] | None, missing_ok: bool, counted: bool = True
    ) -> dict[str, Any]:
        """One try. With a pool `url` is a path: the replica is chosen once a lane is free, so
        that its in-flight count is what is really in flight."""
        replica: Replica | None = None
        try:
            try:
                lane = await self._lanes.get()
                try:
                    body = None if payload is None else json_body(payload)
                    if self._pool is not None:
                        replica = self._pool.take(counted)
                        url = replica.url + url
                    try:
                        response = await lane.request(method, url, content=body)
                    finally:
                        if replica is not None:
                            self._pool.release(replica)
                finally:
                    self._lanes.put_nowait(lane)
            except httpx.TimeoutException as exc:
                raise _Retryable("timeout", f"timed out after {self.remote.timeout:g} s ({type(exc).__name__})") from None
            except httpx.TransportError as exc:
                raise _Retryable("connection", f"{type(exc).__name__}: {exc}") from None
            result = self._answer(response, url, missing_ok)
        except _Retryable as exc:
            exc.replica = replica
            raise
        if replica is not None:
            self._pool.answered(replica, counted)
        return result

    def _answer(self, response: httpx.Response, url: str, missing_ok: bool) -> dict[str, Any]:
        """The JSON of a 200, {} for a tolerated 404; raises for anything else."""
        status = response.status_code
        if status == 200:
            try:
                return response.json()
            except ValueError:
                raise BackendError(f"HTTP 200 with a body that is not JSON: {response.text[:200]!r}") from None
        message = _error_message(response)
        if status in RETRY_STATUS:
            kind = "rate" if status == 429 else "server"
            raise _Retryable(kind, f"HTTP {status}: {message}", retry_after_seconds(response.headers))
        if status in (401, 403):
            raise UsageError(
                f"--api-key-env: the server at {self.base_url} refused the request (HTTP {status}: {message}); "
                f"put the right key in the environment variable {self.remote.api_key_env} or name another "
                "variable with --api-key-env"
            )
        if status == 404 and missing_ok:
            return {}
        if status == 404:
            raise UsageError(
                f"--model/--base-url: HTTP 404 from {url} ({message}); check that --model names a model the "
                "server lists at /v1/models and that --base-url ends with /v1"
            )
        raise BackendError(f"HTTP {status}: {message}")

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

    def _messages(self, request: ChatRequest, prefix: str, image_url: bytes | None) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = []
        if image_url is not None:
            content.append({"type": "image_url", "image_url": {"url": image_url}})
        content.append({"type": "text", "text": request.text})
        messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
        if prefix:
            messages.append({"role": "assistant", "content": prefix})
        return messages

    def _payload(self, request: ChatRequest, prefix: str, max_tokens: int, temperature: float,
                 seed: int, top_logprobs: int, image_url: bytes | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.options.model,
            "messages": self._messages(request, prefix, image_url),
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
            data = await self._call("POST", "/chat/completions", payload)
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
                data = await self._call("POST", "/chat/completions", payload)
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
                          prompt_tokens=_count(usage, "prompt_tokens"),
                          completion_tokens=_count(usage, "completion_tokens"))

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

        results = self._runner.run(gather()) if requests else []
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
            "prefill": self._prefill_body is not None,
            "top_logprobs": self.remote.top_logprobs,
            "min_pixels": self.budget.min_pixels,
            "max_pixels": self.budget.max_pixels,
            # The transport that ran (a cached answer is only reused for the same one): "png",
            # resized here; "original", the file's bytes, resized by the server.
            "image_format": self._prepare.transport,
            **({} if self._pool is None else {"base_url": self._pool.urls, "replicas": self._pool.counts()}),
        }

    def close(self) -> None:
        runner = getattr(self, "_runner", None)
        if runner is None:
            return
        if getattr(self, "_pool", None) is not None:
            try:
                runner.run(self._pool.aclose())
            except RuntimeError:
                pass
        for client in [*getattr(self, "_all_lanes", ()), *filter(None, [getattr(self, "_prober", None)])]:
            try:
                runner.run(client.aclose())
            except RuntimeError:
                pass
        runner.stop()
        self._runner = None
