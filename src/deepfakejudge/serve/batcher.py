"""Dynamic batching: concurrent requests become one model call.

Requests wait in a queue; a collector takes the first, waits at most `window` seconds for more
(up to `max_batch`), groups them by what must match within one call (generation length,
temperature and seed; or the choices), and runs each group as one batch on a single model
thread. While the model works the queue refills, so under load batches form without waiting.
A failed batch is retried request by request, so one bad request fails alone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..backends.base import Backend, BackendError, ChatRequest, Generation, GenerationConfig, raise_failures


@dataclass
class _Item:
    kind: str  # "generate" | "choices"
    group: tuple[Any, ...]
    request: ChatRequest
    arg: Any  # GenerationConfig or the choices
    future: asyncio.Future = field(repr=False)


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    max_batch: int = 0
    failures: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "items": self.items,
            "mean_batch_size": round(self.items / self.batches, 3) if self.batches else None,
            "max_batch_size": self.max_batch,
            "failed_items": self.failures,
        }


class Batcher:
    """Owns the model: every call goes through `submit`, from the server's event loop."""

    def __init__(self, backend: Backend, window: float, max_batch: int) -> None:
        self.backend = backend
        self.window = window
        self.max_batch = max_batch
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._model_thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dfj-model")
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._collect())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._model_thread.shutdown(wait=True)

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def generate(self, request: ChatRequest, config: GenerationConfig) -> Generation:
        group = ("generate", config.max_new_tokens, config.temperature, config.seed)
        return await self._submit(_Item("generate", group, request, config, self.loop.create_future()))

    async def choice_probs(self, request: ChatRequest, choices: Sequence[str]) -> dict[str, float]:
        group = ("choices", tuple(choices))
        return await self._submit(_Item("choices", group, request, tuple(choices), self.loop.create_future()))

    async def _submit(self, item: _Item) -> Any:
        if self._queue is None:
            raise RuntimeError("Batcher.start() was not called")
        await self._queue.put(item)
        return await item.future

    async def _collect(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            deadline = self.loop.time() + self.window
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                left = deadline - self.loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
            groups: dict[tuple[Any, ...], list[_Item]] = defaultdict(list)
            for item in batch:
                groups[item.group].append(item)
            for items in groups.values():
                live = [i for i in items if not i.future.done()]  # a client that went away
                if not live:
                    continue
                try:
                    await self._run(live)
                except Exception as exc:  # noqa: BLE001 - the collector must outlive any batch
                    for item in live:
                        if not item.future.done():
                            item.future.set_exception(exc)

    async def _run(self, items: list[_Item]) -> None:
        self.stats.batches += 1
        self.stats.items += len(items)
        self.stats.max_batch = max(self.stats.max_batch, len(items))
        results = await self.loop.run_in_executor(self._model_thread, self._call_isolated, items)
        for item, result in zip(items, results):
            if item.future.done():
                continue
            if isinstance(result, BaseException):
                self.stats.failures += 1
                item.future.set_exception(result)
            else:
                item.future.set_result(result)

    def _call(self, items: list[_Item]) -> list[Any]:
        requests = [i.request for i in items]
        first = items[0]
        if first.kind == "choices":
            return list(self.backend.choice_probs_each(requests, first.arg))
        # One call per group: the most alternatives anyone asked for, trimmed per request after.
        top = max(i.arg.top_logprobs for i in items)
        out = self.backend.generate_each(requests, replace(first.arg, top_logprobs=top))
        return [
            _trim(g, i.arg.top_logprobs) if isinstance(g, Generation) else g for i, g in zip(items, out)
        ]

    def _call_isolated(self, items: list[_Item]) -> list[Any]:
        """Results per item: the batch at once, else one by one so a failure stays with its item."""
        try:
            return self._call(items)
        except Exception as exc:  # noqa: BLE001 - each request's failure goes back to its client
            if len(items) == 1:
                return [exc]
        return [self._call_isolated([item])[0] for item in items]


def _trim(generation: Generation, top: int) -> Generation:
    steps = tuple(replace(s, top=s.top[:top]) for s in generation.steps)
    return replace(generation, steps=steps)


class BatchedBackend(Backend):
    """A `Backend` for code running in worker threads (the judges) whose calls join the
    server's batches: each request is submitted to the batcher and waited for."""

    def __init__(self, batcher: Batcher) -> None:
        self.batcher = batcher
        self.name = batcher.backend.name
        self.capabilities = batcher.backend.capabilities
        self._gone = threading.Event()
        self._pending: concurrent.futures.Future | None = None
        self._lock = threading.Lock()

    def cancel(self) -> None:
        """The client went away: drop the requests waiting in the batcher and refuse new ones."""
        self._gone.set()
        with self._lock:
            if self._pending is not None:
                self._pending.cancel()

    def _wait(self, submit: Callable[[], list[Any]]) -> list[Any]:
        async def gather() -> list[Any]:
            return await asyncio.gather(*submit(), return_exceptions=True)

        if self._gone.is_set():
            raise BackendError("the client went away")
        future = asyncio.run_coroutine_threadsafe(gather(), self.batcher.loop)
        with self._lock:
            self._pending = future
        if self._gone.is_set():
            future.cancel()
        try:
            results = future.result()
        except concurrent.futures.CancelledError:
            raise BackendError("the client went away") from None
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, BackendError):
                raise r
        return results

    def generate_each(self, requests: Sequence[ChatRequest], config: GenerationConfig) -> list[Generation | BackendError]:
        return self._wait(lambda: [self.batcher.generate(r, config) for r in requests])

    def generate(self, requests: Sequence[ChatRequest], config: GenerationConfig) -> list[Generation]:
        return raise_failures(self.generate_each(requests, config))

    def choice_probs_each(self, requests: Sequence[ChatRequest], choices: Sequence[str]) -> list[dict[str, float] | BackendError]:
        return self._wait(lambda: [self.batcher.choice_probs(r, choices) for r in requests])

    def choice_probs(self, requests: Sequence[ChatRequest], choices: Sequence[str]) -> list[dict[str, float]]:
        return raise_failures(self.choice_probs_each(requests, choices))

    def describe(self) -> dict[str, Any]:
        return self.batcher.backend.describe()
