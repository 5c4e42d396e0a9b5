"""Image payloads for remote backends: each image prepared once per run, never on the event loop.

A chat request carries its image as a data URL. Making one is the costly part of a remote run
(decoding a 1 MP JPEG, resizing it to the pixel budget and PNG-encoding it takes ~0.15 s of CPU,
and a JSON encoder scanning a 2.5 MB string adds ~10 ms per request), and records share images
heavily (both pairwise orders, 25 DFJ-Meta records per image, several detectors per image). So:

- `PayloadCache` keeps each image's data URL by content hash, pixel budget and transport,
  bounded in bytes, and shares one preparation among every request that asks for it while it
  runs. `shared_cache()` is the process's one cache: every backend of a run uses it (both roles
  of `dfj bootstrap` included).
- Preparation runs in a process pool sized to the machine (`workers`; 0: one thread in this
  process), so the client's event loop only sends bytes while images are being prepared. A
  worker that dies costs the requests it was preparing (error rows); a pool that breaks twice
  gives way to the in-process thread, with a warning.
- Two transports. `png` (the default, safe for any server): the image resized with Qwen's rule
  to the budget, as lossless PNG at zlib level 1 with run-length matching only (`PNG_LEVEL`,
  `PNG_STRATEGY`). Measured on 980x980 images: PIL's default (level 6) takes ~250-330 ms for
  at most 2-15% fewer bytes; level 1 ~55-75 ms; level 1 with Z_RLE ~53-64 ms and as small or
  smaller (PNG's row filters leave little for longer matches); level 0 ~30 ms but 1.6-2.7x the
  bytes, which the client then base64-encodes and sends. `original`: the file's own bytes, not
  decoded at all (JPEG sources: ~5x fewer bytes; one base64 pass, done on a thread of this
  process); exact only when the server resizes with the same budget (vLLM
  `--mm-processor-kwargs`, `dfj serve --min-pixels/--max-pixels`; docs/remote-and-serve.md).
- `json_body` builds the request body with the data URL spliced in as bytes: base64 text needs
  no JSON escaping, so it is never scanned again.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import logging
import os
import secrets
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Hashable
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from PIL import Image

from ..errors import InputError, UsageError
from .base import ChatRequest, PixelBudget
from .resize import qwen_resize

log = logging.getLogger("deepfakejudge.backends.image_payload")

TRANSPORTS = ("png", "original")
PNG_LEVEL = 1
PNG_STRATEGY = zlib.Z_RLE
CACHE_BYTES = 512 * 2**20  # a 1 MP image is ~2.5 MB as a PNG data URL, ~0.5 MB as a JPEG one
# Stands in for data URLs while the rest of a request body is JSON-encoded; random per process,
# so no text a request carries can collide with it.
_MARKER = "dfj-image-" + secrets.token_hex(16)


def default_workers() -> int:
    """Worker processes for image preparation: one per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def png_data_url(image: Image.Image, budget: PixelBudget, level: int = PNG_LEVEL) -> bytes:
    """A PNG data URL (ASCII bytes) of `image` resized (bicubic, as Qwen's image processor) to
    the budget with Qwen's rule."""
    rgb = image.convert("RGB")
    height, width = qwen_resize(rgb.height, rgb.width, budget.min_pixels, budget.max_pixels)
    if (width, height) != rgb.size:
        rgb = rgb.resize((width, height), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", compress_level=level, compress_type=PNG_STRATEGY)
    return b"data:image/png;base64," + base64.b64encode(buffer.getvalue())


def encode_image(image: Image.Image, budget: PixelBudget) -> str:
    """A PNG data URL of `image` resized (bicubic, as Qwen's image processor) to the budget."""
    return png_data_url(image, budget).decode("ascii")


def original_data_url(data: bytes) -> bytes:
    """A data URL of the file's own bytes; only its header is read, for the MIME type."""
    with Image.open(io.BytesIO(data)) as img:
        mime = img.get_format_mimetype() or f"image/{(img.format or 'octet-stream').lower()}"
    return b"data:" + mime.encode("ascii") + b";base64," + base64.b64encode(data)


def prepare(source: bytes | Image.Image, min_pixels: int, max_pixels: int, transport: str, level: int) -> bytes:
    """One image's data URL. Runs in a worker process: plain arguments in, bytes out. `source`
    is the file's bytes where known (cheaper to ship than pixels), else the decoded image."""
    if transport == "original":
        if not isinstance(source, bytes):
            raise ValueError("image: the original transport needs the file's bytes")
        return original_data_url(source)
    if isinstance(source, bytes):
        with Image.open(io.BytesIO(source)) as img:
            img.load()
            source = img.convert("RGB")
    return png_data_url(source, PixelBudget(min_pixels, max_pixels), level)


class PayloadCache:
    """Data URLs by key (content hash, budget, transport), least recently used dropped past
    `max_bytes`. `get` returns a future: done for a cached image, shared by every caller while
    the image is being prepared. A failed preparation is not kept (the next caller tries again).
    `prepared` counts preparations started, `hits` the requests served without one."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes: must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._done: OrderedDict[Hashable, bytes] = OrderedDict()
        self._running: dict[Hashable, concurrent.futures.Future] = {}
        self._size = 0
        self._lock = threading.Lock()
        self.prepared = 0
        self.hits = 0

    def get(self, key: Hashable | None, submit: Any) -> concurrent.futures.Future:
        """The data URL for `key`, from the cache or from `submit()` (which starts preparing it
        and returns a future). A None key (content unknown) is prepared every time."""
        with self._lock:
            if key is not None and key in self._done:
                self._done.move_to_end(key)
                self.hits += 1
                done: concurrent.futures.Future = concurrent.futures.Future()
                done.set_result(self._done[key])
                return done
            if key is not None and key in self._running:
                self.hits += 1
                return self._running[key]
            self.prepared += 1
            future = submit()
            if key is not None:
                self._running[key] = future
        if key is not None:
            future.add_done_callback(lambda f: self._finish(key, f))
        return future

    def _finish(self, key: Hashable, future: concurrent.futures.Future) -> None:
        with self._lock:
            self._running.pop(key, None)
            if future.cancelled() or future.exception() is not None:
                return
            url = future.result()
            if len(url) > self.max_bytes or key in self._done:
                return
            self._done[key] = url
            self._size += len(url)
            while self._size > self.max_bytes:
                _, dropped = self._done.popitem(last=False)
                self._size -= len(dropped)

    def __len__(self) -> int:
        with self._lock:
            return len(self._done)

    @property
    def size(self) -> int:
        """Bytes held."""
        with self._lock:
            return self._size


_SHARED = PayloadCache()


def shared_cache() -> PayloadCache:
    """The process's payload cache: every remote backend of a run shares it."""
    return _SHARED


class _Pools:
    """Executors by worker count, made on first use and shared by every backend of the process
    (both roles of `dfj bootstrap` prepare into the same pool and cache). Worker processes are
    spawned, not forked: the client runs threads (its event loop) that a fork would copy
    mid-flight."""

    MAX_BROKEN = 2

    def __init__(self) -> None:
        self._pools: dict[int, concurrent.futures.Executor] = {}
        self._lock = threading.Lock()
        self._broken = 0

    def get(self, workers: int) -> concurrent.futures.Executor:
        with self._lock:
            if self._broken >= self.MAX_BROKEN and workers:
                workers = 0  # processes cannot be started or keep dying here: prepare in-process
            pool = self._pools.get(workers)
            if pool is None:
                if workers == 0:
                    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dfj-image")
                else:
                    import multiprocessing

                    pool = concurrent.futures.ProcessPoolExecutor(
                        workers, mp_context=multiprocessing.get_context("spawn"),
                        initializer=_watch_parent, initargs=(os.getpid(),),
                    )
                self._pools[workers] = pool
            return pool

    def discard(self, workers: int, pool: concurrent.futures.Executor) -> None:
        """Forget a broken pool (a worker died): the next call starts a fresh one."""
        with self._lock:
            if self._pools.get(workers) is pool:
                del self._pools[workers]
                self._broken += 1
                if self._broken == self.MAX_BROKEN:
                    log.warning("warning: image worker processes keep failing; preparing images in this "
                                "process from now on (slower; --image-workers 0 does so from the start)")
        pool.shutdown(wait=False, cancel_futures=True)

    def shutdown(self, wait: bool = False) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.shutdown(wait=wait, cancel_futures=True)


_POOLS = _Pools()


def _watch_parent(parent: int) -> None:
    """In each worker: exit once the client process is gone. A worker waits on a queue whose
    writing end it holds itself, so a client killed with SIGKILL would otherwise leave it running
    for ever (holding the client's stdout and stderr open)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="dfj-image-watch", daemon=True).start()


def shutdown_pools(wait: bool = True) -> None:
    """Stop the worker processes (the next preparation starts fresh ones). Pools otherwise live
    as long as the process: several backends share them, so none of them may stop them."""
    _POOLS.shutdown(wait)


class ImagePreparer:
    """What a backend asks for: `url(request)` -> a future of the request's data URL, prepared
    once per image (content hash, budget, transport) in the shared cache and pool."""

    def __init__(self, budget: PixelBudget, transport: str = "png", workers: int | None = None,
                 cache: PayloadCache | None = None, level: int = PNG_LEVEL) -> None:
        if transport not in TRANSPORTS:
            raise UsageError(f"--image-transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
        if workers is not None and workers < 0:
            raise UsageError(f"--image-workers must be >= 0 (0: prepare in this process), got {workers}")
        self.budget = budget
        self.transport = transport
        self.workers = default_workers() if workers is None else workers
        self.cache = shared_cache() if cache is None else cache
        self.level = level

    def transport_for(self, request: ChatRequest) -> str:
        """`original` needs the file's bytes; an image known only as pixels goes as PNG."""
        return "original" if self.transport == "original" and request.image_bytes is not None else "png"

    def url(self, request: ChatRequest) -> concurrent.futures.Future:
        assert request.image is not None
        transport = self.transport_for(request)
        # The budget is no part of an original payload: the server resizes it.
        budget = (self.budget.min_pixels, self.budget.max_pixels) if transport == "png" else None
        key = None if request.image_key is None else (request.image_key, budget, transport, self.level)
        source: bytes | Image.Image = request.image_bytes if request.image_bytes is not None else request.image
        return self.cache.get(key, lambda: self._submit(source, transport))

    def _submit(self, source: bytes | Image.Image, transport: str) -> concurrent.futures.Future:
        args = (source, self.budget.min_pixels, self.budget.max_pixels, transport, self.level)
        # An original payload is one base64 pass (~1 ms for 0.4 MB): shipping the bytes to a
        # worker and back would cost more than it, so it runs on this process's image thread.
        workers = 0 if transport == "original" else self.workers
        pool = _POOLS.get(workers)
        try:
            return pool.submit(prepare, *args)
        except (BrokenProcessPool, RuntimeError):  # a worker died earlier: start a fresh pool
            _POOLS.discard(workers, pool)
            return _POOLS.get(workers).submit(prepare, *args)


def json_body(payload: dict[str, Any]) -> bytes:
    """`payload` as JSON bytes; image URLs held as bytes (from `ImagePreparer`) are spliced in
    without being scanned by the JSON encoder (base64 and a MIME type need no escaping)."""
    urls: list[bytes] = []

    def swap(value: Any) -> Any:
        if isinstance(value, bytes):
            urls.append(value)
            return _MARKER
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    text = json.dumps(swap(payload), ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if not urls:
        return text
    pieces = text.split(_MARKER.encode("ascii"))
    if len(pieces) != len(urls) + 1:  # cannot happen unless a text holds the random marker
        raise InputError("request body: an image placeholder appears in the request text")
    out = [pieces[0]]
    for url, piece in zip(urls, pieces[1:]):
        out += [url, piece]
    return b"".join(out)
