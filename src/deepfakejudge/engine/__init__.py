"""Executors of a run's batch function: in this process (`local`) or on model replicas that are
Ray actors (`ray`, engine/ray_engine.py).

A run is a `Work`: how to open the backend (from the command's flags) and the task's batch
function over it (a judge's or detector's `iter_batches`). Both engines run the same `Work`, so
the Ray engine is another executor of the same code, not a second implementation; `run_judge`
(judge/runner.py) writes what either yields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from ..backends.base import Backend
from ..errors import UsageError
from ..records import Sample

ENGINES: tuple[str, ...] = ("local", "ray")


@dataclass(frozen=True)
class Work:
    """What a run does, in a form a replica can rebuild on its own machine. Both callables must
    pickle (module-level functions, `functools.partial` of them) for the Ray engine.

    `open_backend()`: the backend the command's flags describe; `batches(backend, samples)`:
    lists of verdicts/RowErrors aligned with `samples` (the local engine's loop)."""

    open_backend: Callable[[], Backend]
    batches: Callable[[Backend, Sequence[Sample]], Iterator[list[Any]]]


class LocalEngine:
    """The batch function in this process, on one backend opened when there is work."""

    name = "local"

    def __init__(self, work: Work):
        self.work = work
        self.backend: Backend | None = None

    def start(self) -> None:
        if self.backend is None:
            self.backend = self.work.open_backend()

    def batches(self, samples: Sequence[Sample]) -> Iterator[list[Any]]:
        self.start()
        return self.work.batches(self.backend, samples)

    def score(self, samples: Sequence[Sample], batch_size: int = 8) -> list[Any]:
        """Every sample's verdict, in order (`judge_scores` calls this)."""
        return [r for rows in self.batches(samples) for r in rows]

    def describe(self) -> dict[str, Any] | None:
        return None if self.backend is None else self.backend.describe()

    def info(self) -> dict[str, Any] | None:
        """The summary's `engine` block: None for the local engine (one process, one backend)."""
        return None

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None


def open_engine(name: str, work: Work, options: Any = None):
    """`local` or `ray` (options: a `RayOptions`)."""
    if name == "local":
        return LocalEngine(work)
    if name == "ray":
        from .ray_engine import RayEngine, RayOptions

        return RayEngine(work, options or RayOptions())
    raise UsageError(f"--engine must be one of {', '.join(ENGINES)}, got {name!r}")
