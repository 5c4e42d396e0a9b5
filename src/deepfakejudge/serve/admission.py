"""Admission control for `dfj serve`: decoded image pixels held at once are bounded.

A compressed PNG of 40 megapixels can be 100 KB on the wire and 120 MB decoded; sixteen at once
took the server from 0.7 to 9 GB. Every request takes the pixels of its image from one shared
`PixelGate` before decoding it and gives them back when it ends (answered, refused or
abandoned); a request that finds no room waits up to --admission-wait seconds, then gets 503
with Retry-After. When the gate empties, freed heap is handed back to the system (glibc keeps
it otherwise), so memory returns after a burst.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time

from .settings import ApiError


def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to hand back by hand
        return None


_TRIM = _malloc_trim()


class PixelGate:
    """At most `capacity` pixels held at once; thread-safe (decoding runs in worker threads)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        self.peak = 0
        self.refused = 0
        self._cond = threading.Condition()

    def acquire(self, pixels: int, timeout: float) -> bool:
        pixels = min(pixels, self.capacity)  # never more than all of it (checked by settings anyway)
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.held + pixels > self.capacity:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.refused += 1
                    return False
                self._cond.wait(left)
            self.held += pixels
            self.peak = max(self.peak, self.held)
            return True

    def release(self, pixels: int) -> None:
        pixels = min(pixels, self.capacity)
        with self._cond:
            self.held -= pixels
            empty = self.held == 0
            self._cond.notify_all()
        if empty and pixels and _TRIM is not None:
            _TRIM(0)

    def as_dict(self) -> dict[str, int]:
        return {"pixels_in_flight": self.held, "pixels_in_flight_peak": self.peak, "admission_refused": self.refused}


class Ticket:
    """One request's share of the gate: `take` before decoding an image, `close` when the
    request ends. A take after close (a worker thread that was still waiting when the client
    went away) gives the pixels straight back and refuses."""

    def __init__(self, gate: PixelGate, wait: float) -> None:
        self.gate = gate
        self.wait = wait
        self.held = 0
        self.closed = False
        self._lock = threading.Lock()

    def take(self, pixels: int, param: str | None = None) -> None:
        if not self.gate.acquire(pixels, self.wait):
            retry = max(1, round(self.wait)) if self.wait else 1
            raise ApiError(503, f"the server is decoding its limit of {self.gate.capacity} image pixels "
                                f"(--max-pixels-in-flight); retry in a moment", param, "server_busy",
                           headers={"Retry-After": str(retry)})
        with self._lock:
            if not self.closed:
                self.held += pixels
                return
        self.gate.release(pixels)
        raise ApiError(499, "the client went away", param)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            held, self.held = self.held, 0
        if held:
            self.gate.release(held)
