"""HTTP transport for remote backends: retries, Retry-After, the loop thread, connections, replicas.

`HttpTransport` sends JSON bodies to one server, or to a pool of replicas of one model
(`replicas.py`), from an asyncio loop in a background thread, at most `concurrency` requests in
flight. 429, 5xx, timeouts and dropped connections are retried with exponential backoff and
jitter, honouring Retry-After. What happens when retries run out:

- a timeout or a 5xx: that request's `BackendError`, so one error row;
- connection refused / dropped, or a 429 that never lifts: `BackendUnavailable`, which stops
  the run (a rerun resumes it) rather than writing an error row for every remaining item;
- 401/403 (the key) or 404 (the model or the URL): `UsageError` naming the option to fix.

It knows nothing of chat messages: the protocol (`openai.py`) builds the bodies and reads the
answers. The API key is read from an environment variable at start and kept only in the
request headers: it is never written to results, logs or caches.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import threading
import time
from collections.abc import Awaitable, Sequence
from typing import Any

import httpx

from ..errors import UsageError
from .base import BackendError, BackendUnavailable, RemoteOptions
from .image_payload import json_body
from .replicas import Replica, ReplicaPool

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 120.0  # seconds


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


def error_message(response: httpx.Response) -> str:
    """The server's own words for a failed call (an OpenAI-style `error.message` where given)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        return str(error.get("message") or error)[:300]
    return str(error)[:300]


class Retryable(Exception):
    """A try that failed in a way worth trying again (internal to the transport)."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # "connection" | "rate" | "timeout" | "server"
        self.retry_after = retry_after
        self.replica: Replica | None = None  # where it failed, with several servers


class LoopThread:
    """An asyncio loop in a daemon thread: the backend's methods are synchronous (judges call
    them from plain code) and must work even when the caller already runs a loop."""

    def __init__(self, name: str = "dfj-openai") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            self.loop.close()


class HttpTransport:
    """JSON calls with retries to `urls` (one server, or several replicas of one model).

    `urls` are checked and stripped of a trailing "/" by the caller. `transport` replaces
    httpx's network transport (tests). `run(coro)` runs a coroutine on the transport's loop
    from synchronous code; `call(...)` is awaited on that loop.
    """

    def __init__(self, urls: Sequence[str], remote: RemoteOptions,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.remote = remote
        # Several URLs: a pool of replicas of one model (backends/replicas.py); one URL: no pool,
        # and every request goes where it always did.
        self.pool = (ReplicaPool(urls, self._probe, remote.backoff_base, remote.backoff_cap)
                     if len(urls) > 1 else None)
        self.base_url = urls[0] if self.pool is None else ", ".join(urls)
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(remote.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._rng = random.Random(0)
        self._runner: LoopThread | None = LoopThread()
        self.client = self._runner.run(self._make_client(headers, transport))

    def run(self, coro: Awaitable[Any]) -> Any:
        """Run `coro` on the transport's loop and return its result (from synchronous code)."""
        return self._runner.run(coro)

    async def _make_client(self, headers: dict[str, str], transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
        # Created on the transport's loop, as is the queue of lanes that bounds requests in flight:
        # a request holds a lane (a client with one connection) while it is sent and answered.
        # Not one client with `concurrency` connections: httpcore scans every connection of its
        # pool for each request, ~3.5 ms of CPU per request at 32 against ~1 ms with a lane each
        # (benchmarks/remote_client.py). The queue, not a pool, does the waiting: time spent
        # waiting for a lane must not count against --timeout (pool=None), and retries wait
        # without holding one. One TLS context for all lanes (httpx makes one per client, even
        # for http://, loading the CA store each time: ~20 ms apiece).
        # With several servers a lane keeps one connection to each (it takes turns among them).
        servers = 1 if self.pool is None else len(self.pool.replicas)
        limits = httpx.Limits(max_connections=servers, max_keepalive_connections=servers)
        timeout = httpx.Timeout(self.remote.timeout, pool=None)
        verify = httpx.create_ssl_context()
        if self.pool is not None:  # health checks of replicas that are out: short, off the lanes
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

    async def call(
        self, method: str, path: str, payload: dict[str, Any] | None, missing_ok: bool = False
    ) -> dict[str, Any]:
        """One HTTP call with retries. Raises BackendError (this request), BackendUnavailable
        (the server) or UsageError (the configuration); a 404 gives {} when `missing_ok`."""
        if self.pool is not None:
            return await self._call_pool(method, path, payload, missing_ok)
        url = self.base_url + path
        last: Retryable | None = None
        for attempt in range(self.remote.max_retries + 1):
            if attempt:
                delay = backoff_delay(
                    attempt - 1, self.remote.backoff_base, self.remote.backoff_cap, last.retry_after, self._rng
                )
                await asyncio.sleep(delay)
            try:
                return await self._attempt(method, url, payload, missing_ok)
            except Retryable as exc:
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
        """`call` over several servers: a try that fails on one goes at once to another that
        is in; the backoff is waited only while every server is out (or for a 429 from all)."""
        assert self.pool is not None
        counted = method == "POST"  # completions, not the start-up GET /models
        last: Retryable | None = None
        for attempt in range(self.remote.max_retries + 1):
            if attempt and not self.pool.any_up():
                delay = backoff_delay(
                    attempt - 1, self.remote.backoff_base, self.remote.backoff_cap, last.retry_after, self._rng
                )
                await self.pool.wait_up(delay)
            try:
                return await self._attempt(method, path, payload, missing_ok, counted=counted)
            except Retryable as exc:
                last = exc
                assert exc.replica is not None
                self.pool.failed(exc.replica, exc.retry_after, counted=counted)
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
                    if self.pool is not None:
                        replica = self.pool.take(counted)
                        url = replica.url + url
                    try:
                        response = await lane.request(method, url, content=body)
                    finally:
                        if replica is not None:
                            self.pool.release(replica)
                finally:
                    self._lanes.put_nowait(lane)
            except httpx.TimeoutException as exc:
                raise Retryable("timeout", f"timed out after {self.remote.timeout:g} s ({type(exc).__name__})") from None
            except httpx.TransportError as exc:
                raise Retryable("connection", f"{type(exc).__name__}: {exc}") from None
            result = self._answer(response, url, missing_ok)
        except Retryable as exc:
            exc.replica = replica
            raise
        if replica is not None:
            self.pool.answered(replica, counted)
        return result

    def _answer(self, response: httpx.Response, url: str, missing_ok: bool) -> dict[str, Any]:
        """The JSON of a 200, {} for a tolerated 404; raises for anything else."""
        status = response.status_code
        if status == 200:
            try:
                return response.json()
            except ValueError:
                raise BackendError(f"HTTP 200 with a body that is not JSON: {response.text[:200]!r}") from None
        message = error_message(response)
        if status in RETRY_STATUS:
            kind = "rate" if status == 429 else "server"
            raise Retryable(kind, f"HTTP {status}: {message}", retry_after_seconds(response.headers))
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

    def close(self) -> None:
        """Close the pool, the connections and the loop thread; a second call does nothing."""
        runner = self._runner
        if runner is None:
            return
        if self.pool is not None:
            try:
                runner.run(self.pool.aclose())
            except RuntimeError:
                pass
        for client in [*getattr(self, "_all_lanes", ()), *filter(None, [getattr(self, "_prober", None)])]:
            try:
                runner.run(client.aclose())
            except RuntimeError:
                pass
        runner.stop()
        self._runner = None
