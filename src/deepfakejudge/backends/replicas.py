"""Several servers of one model behind one run (`--base-url` given more than once).

vLLM or SGLang replicas, or several `dfj serve`, each serving the same model. Every request
goes to the least-loaded replica that is in: the fewest requests in flight, then the fewest
sent. A replica that fails a request (connection refused or dropped, a timeout, a 5xx, a 429)
is taken out, and the request is tried again at once on another (`http.HttpTransport.call`). A
replica that is out is probed with `GET {base_url}/models` after a delay that doubles while it
stays down (capped, and never before its Retry-After), and is put back when the probe gets an
answer. With every replica out, a request waits for one to come back (at most its backoff
delay), then tries the one due back first: that try is a probe too.

The pool only chooses and keeps count; it never sends a request itself apart from its probes.
All of it runs on the backend's one event loop, so no lock is needed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError


@dataclass
class Replica:
    """One server and what the pool knows of it (mutable state, not a record)."""

    url: str
    up: bool = True
    in_flight: int = 0
    sent: int = 0  # completions sent to it (start-up and probe calls are not counted)
    answered: int = 0  # ... of which it answered with a 200
    failed: int = 0  # ... of which failed there and were tried again (elsewhere where one was in)
    taken_out: int = 0  # times it was taken out of the pool
    back_at: float = 0.0  # monotonic time of its next probe, while out
    delay: float = 0.0  # current probe delay, doubled per failed probe

    def counts(self) -> dict[str, Any]:
        return {"sent": self.sent, "answered": self.answered, "failed": self.failed,
                "taken_out": self.taken_out, "in": self.up}


class ReplicaPool:
    """Chooses the replica for each request and puts failed ones back after a health check.

    `probe(url)` answers whether the server at `url` is up; `base`/`cap` bound the probe delay
    (seconds). `clock` is injectable for tests of the schedule.
    """

    def __init__(self, urls: Sequence[str], probe: Callable[[str], Awaitable[bool]], base: float = 0.5,
                 cap: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        if len(urls) < 2:
            raise UsageError(f"--base-url: a pool needs at least two servers, got {len(urls)}")
        if len(set(urls)) != len(urls):
            raise UsageError(f"--base-url: the same server is given twice in {list(urls)}; give each once")
        self.replicas = [Replica(url) for url in urls]
        self._probe = probe
        self._base, self._cap, self._clock = base, cap, clock
        self._probes: dict[str, asyncio.Task[None]] = {}

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    def any_up(self) -> bool:
        return any(r.up for r in self.replicas)

    def take(self, counted: bool = True) -> Replica:
        """The replica for the next request, its in-flight count raised (`release` lowers it):
        the least loaded of those in, else the one due back first."""
        live = [r for r in self.replicas if r.up]
        if live:
            replica = min(live, key=lambda r: (r.in_flight, r.sent))
        else:
            replica = min(self.replicas, key=lambda r: r.back_at)
        replica.in_flight += 1
        if counted:
            replica.sent += 1
        return replica

    def release(self, replica: Replica) -> None:
        replica.in_flight -= 1

    def answered(self, replica: Replica, counted: bool = True) -> None:
        """The replica answered: it is in (a request that went to it while it was out was a probe)."""
        if counted:
            replica.answered += 1
        if not replica.up:
            self._put_back(replica)

    def failed(self, replica: Replica, retry_after: float | None = None, counted: bool = True) -> None:
        """The replica failed a request: take it out and schedule its probe."""
        if counted:
            replica.failed += 1
        now = self._clock()
        if replica.up:
            replica.up = False
            replica.taken_out += 1
            replica.delay = self._base
            replica.back_at = now + max(self._base, retry_after or 0.0)
        elif retry_after:
            replica.back_at = max(replica.back_at, now + retry_after)
        task = self._probes.get(replica.url)
        if task is None or task.done():
            self._probes[replica.url] = asyncio.get_running_loop().create_task(self._watch(replica))

    async def wait_up(self, seconds: float) -> bool:
        """Wait until a replica is in, at most `seconds`; True if one is."""
        deadline = self._clock() + seconds
        while not self.any_up() and self._clock() < deadline:
            await asyncio.sleep(min(0.05, max(0.0, deadline - self._clock())))
        return self.any_up()

    def counts(self) -> dict[str, dict[str, Any]]:
        """Per replica: completions sent, answered and failed there, times taken out, whether in."""
        return {r.url: r.counts() for r in self.replicas}

    async def aclose(self) -> None:
        tasks = [t for t in self._probes.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._probes.clear()

    def _put_back(self, replica: Replica) -> None:
        replica.up = True
        replica.delay = 0.0
        replica.back_at = 0.0

    async def _watch(self, replica: Replica) -> None:
        """Probe `replica` until it answers (or a request it got as a probe did)."""
        while not replica.up:
            wait = replica.back_at - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
                continue  # back_at may have moved (a Retry-After) while waiting
            try:
                ok = await self._probe(replica.url)
            except Exception:  # noqa: BLE001 - a probe that fails in any way means "still out"
                ok = False
            if replica.up:
                return
            if ok:
                self._put_back(replica)
                return
            replica.delay = min(self._cap, max(replica.delay, self._base) * 2)
            replica.back_at = self._clock() + replica.delay
