"""A content-addressed request cache around any backend: a rerun costs no model call.

The key of a request is the SHA-256 of what determines its answer: the backend's identity
(`describe()`: engine, model, adapter, pixel budget, dtype, device...; for a server, the model
name, the server kind and the weights it lists), the prompt text (which embeds the template,
hence its hash), the assistant prefix, the image's content hash (`ChatRequest.image_key`, else a
hash of its pixels), and the sampling settings or the choices.
Values are the results themselves (compressed JSON), so a cached item comes back identical.

Server addresses are not part of the key: the answer depends on the model that is served, not on
where. A run against another set of replicas of the same model (any number, any order), or
against a server moved to another host or port, is answered from the cache. The served model is
known by its `--model` name, the server kind (`owned_by`) and, where `/v1/models` lists them
(vLLM, SGLang, `dfj serve`), its weights' path or hub id (`root`) and a LoRA module's base
(`parent`), and `dfj serve`'s digest of its checkpoint files (`dfj_fingerprint`). The risk this
takes: two different models served under the same name, by servers that list no weights
(OpenAI-style APIs) or from the same path (a model retrained in place on vLLM/SGLang), share
their entries. Serve them under different names, or give each its own `--cache` file, or pass
`--no-cache`.

One SQLite file in WAL mode: any number of processes and threads may read and write it at
once (a writer waits up to `busy_timeout` for another). Each answer is written as it arrives
(one short transaction; engines that report answers one by one, see `Backend.streams_results`),
so a killed run re-asks only the requests in flight. Only successes with content are stored;
failures and empty replies are asked again next time. The API key is never part of a key or a value.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..runtime import user_cache_dir
from .base import (
    Backend,
    BackendError,
    BackendUnavailable,
    ChatRequest,
    Generation,
    GenerationConfig,
    TokenStep,
    raise_failures,
)

# 2: server addresses left the key (entries of version 1 hold them, and are never read as 2's).
SCHEMA_VERSION = 2
# describe() entries that do not change an answer: left out of the key ("base_url": where the
# model is served, see above; "replicas": a server pool's per-server counts).
VOLATILE = frozenset({"cache", "concurrency", "timeout", "max_retries", "vision_cache_mb", "vision_attention",
                      "base_url", "replicas"})


def default_cache_path() -> Path:
    """$DFJ_CACHE, else $XDG_CACHE_HOME/deepfakejudge/requests.sqlite (~/.cache by default)."""
    if os.environ.get("DFJ_CACHE"):
        return Path(os.environ["DFJ_CACHE"]).expanduser()
    return user_cache_dir() / "requests.sqlite"


def image_digest(request: ChatRequest) -> str | None:
    if request.image is None:
        return None
    if request.image_key:
        return request.image_key
    image = request.image.convert("RGB")
    h = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    h.update(image.tobytes())
    return "pixels:" + h.hexdigest()


def request_key(identity: dict[str, Any], op: str, request: ChatRequest, params: dict[str, Any]) -> str:
    material = {
        "v": SCHEMA_VERSION,
        "op": op,
        "backend": identity,
        "text": request.text,
        "prefix": request.prefix,
        "image": image_digest(request),
        "params": params,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def sampling_params(config: GenerationConfig) -> dict[str, Any]:
    # Re-ask settings are the judges' business: a re-ask arrives here with its own temperature
    # and seed, so they are not part of the key.
    return {
        "max_new_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "top_logprobs": config.top_logprobs,
        "seed": config.seed,
    }


def encode_generation(g: Generation) -> dict[str, Any]:
    return {
        "text": g.text,
        "finish_reason": g.finish_reason,
        "steps": [[s.offset, s.token, s.logprob, [list(t) for t in s.top]] for s in g.steps],
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.completion_tokens,
    }


def decode_generation(d: dict[str, Any]) -> Generation:
    steps = tuple(
        TokenStep(offset=o, token=t, logprob=lp, top=tuple((a, b) for a, b in top)) for o, t, lp, top in d["steps"]
    )
    # .get: entries written before the counts were stored have none
    return Generation(text=d["text"], steps=steps, finish_reason=d["finish_reason"],
                      prompt_tokens=d.get("prompt_tokens"), completion_tokens=d.get("completion_tokens"))


def is_answer(result: Any) -> bool:
    """What may be cached as a success: a generation with non-empty text, or a non-empty
    distribution. Failures, and empty or null replies, are asked again next time."""
    if result is None or isinstance(result, BaseException):
        return False
    if isinstance(result, Generation):
        return bool(result.text.strip())
    return bool(result)


class RequestCache:
    """Key -> JSON value in one SQLite file (WAL). Safe across threads and processes."""

    def __init__(self, path: str | Path, busy_timeout: float = 60.0) -> None:
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, op TEXT NOT NULL, "
                "value BLOB NOT NULL, created REAL NOT NULL)"
            )
        except (sqlite3.DatabaseError, OSError) as exc:
            raise UsageError(
                f"--cache {self.path}: cannot open it as a request cache ({exc}); pass another path, "
                "delete the file, or use --no-cache"
            ) from exc
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            for start in range(0, len(unique), 500):
                chunk = unique[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(f"SELECT key, value FROM entries WHERE key IN ({marks})", chunk)
                for key, blob in rows:
                    found[key] = json.loads(zlib.decompress(blob))
        return found

    def put_many(self, items: Sequence[tuple[str, str, Any]]) -> None:
        """Store (key, op, value) triples in one transaction; existing keys are kept."""
        if not items:
            return
        now = time.time()
        rows = [(k, op, zlib.compress(json.dumps(v, ensure_ascii=False).encode()), now) for k, op, v in items]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR IGNORE INTO entries VALUES (?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CachedBackend(Backend):
    """Wraps any backend: requests already answered come from the cache, the rest go to it."""

    def __init__(self, inner: Backend, cache: RequestCache) -> None:
        self.inner = inner
        self.cache = cache
        self.name = inner.name
        self.capabilities = inner.capabilities
        self._identity: dict[str, Any] | None = None

    @property
    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            described = self.inner.describe()
            self._identity = {k: v for k, v in sorted(described.items()) if k not in VOLATILE}
        return self._identity

    def _each(
        self,
        op: str,
        requests: Sequence[ChatRequest],
        params: dict[str, Any],
        call: Callable[..., list[Any]],
        encode: Callable[[Any], Any],
        decode: Callable[[Any], Any],
    ) -> list[Any]:
        keys = [request_key(self.identity, op, r, params) for r in requests]
        found = self.cache.get_many(keys)
        results: list[Any] = [decode(found[k]) if k in found else None for k in keys]
        todo = [i for i, k in enumerate(keys) if k not in found]
        self.cache.hits += len(requests) - len(todo)
        self.cache.misses += len(todo)
        if not todo:
            return results
        stored: set[int] = set()

        def arrived(j: int, result: Any) -> None:
            # One short transaction per answer (WAL): a kill -9 loses only the requests in flight.
            self._store(op, [(keys[todo[j]], result)], encode)
            stored.add(j)

        streaming = {"on_result": arrived} if getattr(self.inner, "streams_results", False) else {}
        try:
            fresh = call([requests[i] for i in todo], **streaming)
        except BackendUnavailable as exc:
            if exc.partial is not None:  # keep what did arrive before the server went away
                self._store(op, [(keys[i], r) for j, (i, r) in enumerate(zip(todo, exc.partial)) if j not in stored], encode)
            raise
        self._store(op, [(keys[i], r) for j, (i, r) in enumerate(zip(todo, fresh)) if j not in stored], encode)
        for i, r in zip(todo, fresh):
            results[i] = r
        return results

    def _store(self, op: str, pairs: list[tuple[str, Any]], encode: Callable[[Any], Any]) -> None:
        good = [(k, op, encode(r)) for k, r in pairs if is_answer(r)]
        self.cache.put_many(good)

    def generate_each(self, requests: Sequence[ChatRequest], config: GenerationConfig) -> list[Generation | BackendError]:
        params = sampling_params(config)
        if getattr(self.inner, "honours_stop_at_answer", False) and config.stop_at_answer is not None:
            params["stop_at_answer"] = config.stop_at_answer
        return self._each(
            "generate", requests, params,
            lambda todo, **kw: self.inner.generate_each(todo, config, **kw), encode_generation, decode_generation,
        )

    def generate(self, requests: Sequence[ChatRequest], config: GenerationConfig) -> list[Generation]:
        return raise_failures(self.generate_each(requests, config))

    def choice_probs_each(self, requests: Sequence[ChatRequest], choices: Sequence[str]) -> list[dict[str, float] | BackendError]:
        return self._each(
            "choice_probs", requests, {"choices": list(choices)},
            lambda todo, **kw: self.inner.choice_probs_each(todo, choices, **kw), dict, dict,
        )

    def choice_probs(self, requests: Sequence[ChatRequest], choices: Sequence[str]) -> list[dict[str, float]]:
        return raise_failures(self.choice_probs_each(requests, choices))

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "cache": str(self.cache.path)}

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self.cache.close()
