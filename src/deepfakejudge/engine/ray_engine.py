"""`--engine ray`: the run's batch function on model replicas that are Ray actors.

The driver (the `dfj` process) keeps the results file: it sends chunks of samples (ids, texts
and image *paths*; each replica opens the images itself from storage every node sees) to the
replicas, two chunks queued per replica, and yields each chunk's rows as it comes back, so
`run_judge` writes them at once, each id once, and a rerun resumes from the file as with the
local engine.

Why actors fed by the driver rather than a Ray Dataset pipeline: the driver must write every
row itself, once, as it arrives, and resume from the file; that is a queue of chunks and
`ray.wait`, and Ray's actor fault tolerance (`max_restarts`, `max_task_retries`) already re-runs
the chunks a killed replica held. A chunk is `SORT_POOL_BATCHES` batches, the pool the local
engine sorts and batches within, so every model call sees the batch it sees locally: the rows
are the local engine's rows.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import Counter, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from ..backends.base import BackendUnavailable
from ..errors import MissingExtra, UsageError
from ..judge.common import SORT_POOL_BATCHES, batched
from ..records import Sample

if TYPE_CHECKING:  # annotations only: engine/__init__ imports this module
    from . import Work

INSTALL_HINT = "install it with: pip install 'deepfakejudge[ray]'"

# A killed replica is restarted (its model loaded again) and the chunks it held re-run on it, up
# to these many times; past that its chunks move to the other replicas.
MAX_RESTARTS = 4
MAX_TASK_RETRIES = 4
# Chunks queued per replica: the next one is ready when one ends, without a driver round trip.
IN_FLIGHT = 2


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise MissingExtra(f"--engine ray needs Ray, which is not installed: {INSTALL_HINT}") from exc
    return ray


@dataclass(frozen=True)
class RayOptions:
    """`--ray-address`, `--replicas`, `--gpus-per-replica`, `--cpus-per-replica` (None: from the
    cluster's resources), the run's `--batch-size`, and whether the model wants a GPU (the hf
    backend on a device other than cpu)."""

    address: str | None = None
    replicas: int | None = None
    gpus_per_replica: float | None = None
    cpus_per_replica: float | None = None
    batch_size: int = 8
    wants_gpu: bool = True


@dataclass(frozen=True)
class Plan:
    replicas: int
    gpus_per_replica: float
    cpus_per_replica: float


def plan_replicas(options: RayOptions, nodes: Sequence[Mapping[str, float]]) -> Plan:
    """How many replicas of which size, from the options and the alive nodes' resources.

    Defaults: a model on GPU gets one GPU and one CPU per replica and one replica per GPU;
    otherwise one replica per `--cpus-per-replica` CPUs when that is given, else one replica
    with the largest node's CPUs (torch uses them all). Raises ValueError when the replicas do
    not fit on the cluster (Ray would otherwise wait for resources forever)."""
    if options.replicas is not None and options.replicas < 1:
        raise UsageError(f"--replicas must be >= 1, got {options.replicas}")
    for name, value in (("--gpus-per-replica", options.gpus_per_replica), ("--cpus-per-replica", options.cpus_per_replica)):
        if value is not None and value < 0:
            raise UsageError(f"{name} must be >= 0, got {value}")
    total_gpu = sum(n.get("GPU", 0.0) for n in nodes)
    total_cpu = sum(n.get("CPU", 0.0) for n in nodes)
    largest_cpu = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    gpus = options.gpus_per_replica
    if gpus is None:
        gpus = 1.0 if options.wants_gpu and total_gpu >= 1 else 0.0
    cpus = options.cpus_per_replica
    replicas = options.replicas
    if cpus is None:
        cpus = 1.0 if gpus > 0 else max(1.0, min(largest_cpu, total_cpu // (replicas or 1)))
    if replicas is None:
        if gpus > 0:
            replicas = max(1, int(total_gpu // gpus))
        elif options.cpus_per_replica:
            replicas = max(1, int(total_cpu // cpus))
        else:
            replicas = 1
    fits = sum(min(_fit(n.get("GPU", 0.0), gpus), _fit(n.get("CPU", 0.0), cpus)) for n in nodes)
    if fits < replicas:
        raise UsageError(
            f"--replicas {replicas} with --gpus-per-replica {gpus:g} and --cpus-per-replica {cpus:g} do not fit on "
            f"the Ray cluster ({len(nodes)} node(s), {total_gpu:g} GPU(s), {total_cpu:g} CPU(s) in all; {fits} such "
            f"replica(s) fit): ask for fewer or smaller replicas, or add nodes")
    return Plan(replicas, float(gpus), float(cpus))


def _cause(exc: Exception) -> Exception:
    """The exception a replica raised (its message, not Ray's wrapper with the remote traceback),
    so the CLI reports it and exits as it does for the local engine."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, Exception) else exc


def _check_reachable(address: str) -> None:
    """A HOST:PORT that nothing answers on is refused at once: Ray itself retries for minutes."""
    host, _, port = address.rpartition(":")
    if "://" in address or not port.isdigit():
        return  # ray://, auto: left to Ray
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as exc:
        raise UsageError(
            f"--ray-address (or RAY_ADDRESS) {address}: no Ray cluster answers there ({exc}); start one with "
            f"`ray start --head --port {port}` on that node, or give the head node's address") from None


def _cluster_errors_to_stderr(ray) -> None:
    """Ray's driver thread prints the cluster's error messages ("Task Replica.run failed ... will
    be retried", possibly after the run) on stdout, which holds the --json summary: send them to
    stderr. Ray has no setting for it, so its printer is wrapped (once; skipped if it moves)."""
    worker = getattr(getattr(ray, "_private", None), "worker", None)
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "dfj_stderr", False):
        return

    def to_stderr(data, *args, **kwargs):
        if data.get("pid") == "raylet":
            data = {**data, "is_err": True}
        return original(data, *args, **kwargs)

    to_stderr.dfj_stderr = True
    worker.print_to_stdstream = to_stderr


def _fit(available: float, need: float) -> int:
    return 1 << 30 if need <= 0 else int(available // need + 1e-9)


class Replica:
    """One model replica (a Ray actor): the backend the command's flags describe, loaded once,
    and the task's batch function over it."""

    def __init__(self, index: int, work: Work):
        self.index = index
        self.work = work
        self.backend = None
        self.failed: Exception | None = None
        try:
            self.backend = work.open_backend()
        except Exception as exc:  # noqa: BLE001 - kept and raised by the first call
            # Ray keeps only the text of a constructor's error; raised from a method, the
            # driver gets the exception itself (a bad --model exits 2 as with the local engine).
            self.failed = exc

    def _backend(self):
        if self.failed is not None:
            raise self.failed
        return self.backend

    def run(self, chunk: int, samples: Sequence[Sample]) -> tuple[int, int, int, list[Any]]:
        """(chunk number, replica index, process id, one verdict or RowError per sample)."""
        rows = [r for batch in self.work.batches(self._backend(), samples) for r in batch]
        return chunk, self.index, os.getpid(), rows

    def describe(self) -> tuple[int, dict[str, Any]]:
        """(process id, the backend's description)."""
        return os.getpid(), self._backend().describe()

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()


class RayEngine:
    """Run a `Work` on `--replicas` Ray actors; `batches(samples)` yields each chunk's rows as
    it completes (not in input order; `score` restores the order)."""

    name = "ray"

    def __init__(self, work: Work, options: RayOptions):
        if options.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {options.batch_size}")
        self.ray = import_ray()  # before any data or model: a missing extra fails first
        self.work = work
        self.options = options
        self.plan: Plan | None = None
        self.actors: list[Any] = []
        self.items: Counter[int] = Counter()
        self.pids: dict[int, set[int]] = {}
        self.moved = 0
        self.address: str | None = None
        self._description: dict[str, Any] | None = None
        self._owns_ray = False

    @property
    def chunk_size(self) -> int:
        return self.options.batch_size * SORT_POOL_BATCHES

    def start(self) -> None:
        ray = self.ray
        _cluster_errors_to_stderr(ray)
        if not ray.is_initialized():
            address = self.options.address or os.environ.get("RAY_ADDRESS") or None
            extra = {} if address else {"include_dashboard": False}  # a local cluster for this run only
            if address:
                _check_reachable(address)
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, **extra)
            self._owns_ray = True
        self.address = ray.get_runtime_context().gcs_address
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        self.plan = plan_replicas(self.options, nodes)
        actor = ray.remote(Replica).options(
            num_cpus=self.plan.cpus_per_replica, num_gpus=self.plan.gpus_per_replica,
            max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES)
        self.actors = [actor.remote(i, self.work) for i in range(self.plan.replicas)]
        # Every replica has loaded its model before the first chunk: a bad --model fails here,
        # with the replica's own error.
        described = self._get([a.describe.remote() for a in self.actors])
        self.pids = {i: {pid} for i, (pid, _) in enumerate(described)}
        self._description = described[0][1]

    def _get(self, refs):
        from ray.exceptions import RayTaskError

        try:
            return self.ray.get(refs)
        except RayTaskError as exc:
            raise _cause(exc) from None

    def batches(self, samples: Sequence[Sample]) -> Iterator[list[Any]]:
        for _, rows in self.chunks(samples):
            yield rows

    def score(self, samples: Sequence[Sample], batch_size: int = 8) -> list[Any]:
        """Every sample's verdict, in input order (`judge_scores` calls this)."""
        done = dict(self.chunks(samples))
        return [r for k in sorted(done) for r in done[k]]

    def chunks(self, samples: Sequence[Sample]) -> Iterator[tuple[int, list[Any]]]:
        """(chunk number, rows) as chunks complete. A replica Ray could not bring back within
        its restarts is dropped and its chunks go to the others."""
        from ray.exceptions import RayActorError, RayTaskError

        ray = self.ray
        if not self.actors:
            self.start()
        todo = deque(enumerate(batched(samples, self.chunk_size)))
        pending: dict[Any, tuple[int, int, list[Sample]]] = {}
        load: Counter[int] = Counter()
        alive = set(range(len(self.actors)))

        def feed(i: int, depth: int = IN_FLIGHT) -> None:
            while load[i] < depth and todo:
                k, chunk = todo.popleft()
                pending[self.actors[i].run.remote(k, chunk)] = (i, k, chunk)
                load[i] += 1

        for depth in range(1, IN_FLIGHT + 1):  # round robin: a short run still uses every replica
            for i in sorted(alive):
                feed(i, depth)
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            i, k, chunk = pending.pop(ref)
            load[i] -= 1
            try:
                _, index, pid, rows = ray.get(ref)
            except RayActorError:
                alive.discard(i)
                todo.appendleft((k, chunk))
                self.moved += 1
                if not alive:
                    raise BackendUnavailable(
                        f"all {len(self.actors)} Ray replicas died, each after {MAX_RESTARTS} restarts (see the "
                        "Ray logs for why); the rows written so far are kept: run the same command again to "
                        "resume") from None
                for j in sorted(alive):
                    feed(j)
                continue
            except RayTaskError as exc:  # the task's own exception, raised as in the local engine
                raise _cause(exc) from None
            self.items[index] += len(rows)
            self.pids.setdefault(index, set()).add(pid)
            yield k, rows
            feed(i)

    def describe(self) -> dict[str, Any] | None:
        return self._description

    def info(self) -> dict[str, Any]:
        """The summary's `engine` block: the cluster, the replicas and how much each did."""
        plan = self.plan
        return {
            "name": "ray",
            "address": self.address,
            "replicas": None if plan is None else plan.replicas,
            "gpus_per_replica": None if plan is None else plan.gpus_per_replica,
            "cpus_per_replica": None if plan is None else plan.cpus_per_replica,
            "chunk_size": self.chunk_size,
            "items_per_replica": {str(i): self.items[i] for i in range(0 if plan is None else plan.replicas)},
            # Seen as a new process id answering for the replica: restarts after a crash or kill.
            "restarts_seen": {str(i): len(p) - 1 for i, p in sorted(self.pids.items()) if len(p) > 1},
            "chunks_moved": self.moved,
        }

    def close(self) -> None:
        ray = self.ray
        for a in self.actors:
            try:
                ray.get(a.close.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - a dead replica has nothing left to close
                pass
            ray.kill(a, no_restart=True)
        self.actors = []
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False
