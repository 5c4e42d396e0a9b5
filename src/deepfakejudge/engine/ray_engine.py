"""`--engine ray`: the run's batch function on model replicas, with Ray Data.

The records the driver (the `dfj` process) still has to do, after resume, are a Ray Dataset;
`map_batches` runs them through a fixed pool of `--replicas` actors (`Replica`: the backend the
command's flags describe, opened once per actor, and the local engine's batch function over it),
each reserving `--gpus-per-replica` GPUs and `--cpus-per-replica` CPUs. The driver iterates the
output as it completes (not in input order) and yields each pool's rows, so `run_judge` writes
them at once and a rerun resumes from the results file as with the local engine.

A row of the dataset is one *pool* of records: `SORT_POOL_BATCHES` batches of `--batch-size`
consecutive records, the unit the local engine sorts and batches within (judge/common.py), each
in a block of its own, and `map_batches` takes one row per call (`batch_size=1`). Records as rows
with a `batch_size` of one pool would not do: Ray Data forms batches within each task's input,
whose blocks it sizes (splits, coalesces) itself, so a batch could end short of a pool's
boundary; a row it never splits. So every model call sees the batch it sees locally and the
rows are the local engine's rows. A pool travels as its pickled `Sample` objects: ids, texts and
image paths or URLs, never image bytes; each replica opens the images itself from storage every
node sees, in the driver's working directory where its node has it.

Failures. Ray Data's defaults for map actors are `max_restarts=-1` and `max_task_retries=-1`
(restart and retry forever; actor_pool_map_operator.py). They are set here to `MAX_RESTARTS` and
`MAX_TASK_RETRIES`: a killed replica is restarted (its model loaded again) and the pools it held
re-run on it; a replica that dies past that fails the execution (Ray Data aborts on a failed
task), which stops the run with `BackendUnavailable` (exit 3, rows kept, rerun resumes). A
replica's own exception (a bad `--model`, a server that is down) is returned as a value and
raised by the driver as it was raised, so the CLI exits as it does with the local engine (Ray
Data would raise it wrapped, its message extended with retry advice). The driver writes each
pool once: a pool delivered again (Ray re-executing a task whose output was already read) is
dropped, and counted.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import socket
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from ..backends.base import BackendUnavailable
from ..errors import MissingExtra, UsageError
from ..judge.common import SORT_POOL_BATCHES, batched
from ..records import Sample

if TYPE_CHECKING:  # annotations only: engine/__init__ imports this module
    from . import Work

INSTALL_HINT = "install it with: pip install 'deepfakejudge[ray]'"

# A killed replica is restarted (its model loaded again) and the pools it held re-run on it, up to
# these many times; past that the run stops (exit 3) and a rerun resumes. Also the number of
# replicas in a row that may die while loading before the run stops.
MAX_RESTARTS = 4
MAX_TASK_RETRIES = 4
# Every replica has loaded its model before the first pool is sent (so pools are dealt evenly,
# and a short run uses every replica), waiting up to this long: a large checkpoint read by every
# node from one storage at once is slow. The plan already refused replicas the cluster cannot fit.
WAIT_FOR_REPLICAS_S = 3600


def import_ray():
    """Ray with Ray Data (the `ray` extra), or MissingExtra with the install line."""
    try:
        import ray
        import ray.data  # noqa: F401 - pandas and pyarrow: Ray Data's part of the extra
    except ImportError as exc:
        raise MissingExtra(f"--engine ray needs Ray Data, which is not installed ({exc}): {INSTALL_HINT}") from exc
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
    """Ray's driver thread prints the cluster's error messages ("A worker died or was killed while
    executing a task", possibly after the run) on stdout, which holds the --json summary: send them to
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


def _quiet_ray_data(ray) -> Any:
    """Ray Data's context for this run: no progress bars or execution banner of its own (the run
    has one bar, and stdout holds the --json summary), its INFO lines kept in its log file only,
    finite restarts for replicas that die while loading, and every replica loaded before the
    first pool."""
    from ray.data import DataContext
    from ray.util.debug import log_once

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.max_consecutive_actor_init_deaths = MAX_RESTARTS
    ctx.wait_for_min_actors_s = WAIT_FOR_REPLICAS_S
    log_once("ray_data_progress_manager_disabled")  # its warning that the bars are off: they are, on purpose
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)
    return ctx


def _pickled_error(exc: Exception) -> bytes:
    """The replica's exception as the driver will raise it; one that cannot be pickled (it holds a
    lock, a socket) becomes a RuntimeError with its type and message."""
    try:
        return pickle.dumps(("error", exc, None))
    except Exception:  # noqa: BLE001 - any pickling failure: keep the message
        return pickle.dumps(("error", RuntimeError(f"{type(exc).__name__}: {exc}"), None))


class Replica:
    """One model replica, a Ray Data actor: the backend the command's flags describe, opened once,
    and the task's batch function over it, one pool per call."""

    def __init__(self, work: Work, cwd: str):
        import ray

        if os.path.isdir(cwd):
            # The driver's working directory, where a node has it (a local cluster, shared storage):
            # a relative --model, --adapter or --cache means what it means on the driver.
            os.chdir(cwd)
        self.work = work
        self.pid = os.getpid()
        self.tag = ray.get_runtime_context().get_actor_id()  # the same after a restart; the pid is not
        self.backend = None
        self.failed: Exception | None = None
        self.described = False
        try:
            self.backend = work.open_backend()
        except Exception as exc:  # noqa: BLE001 - returned by the first call
            # Raised here, Ray Data would keep only its text; returned from a call, the driver
            # raises the exception itself (a bad --model exits 2 as with the local engine).
            self.failed = exc

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, list]:
        """One pool in ("pool": its number, "samples": the pickled samples); out: the pool, this
        replica's tag and pid, and "result": pickled ("rows", rows, description) or ("error",
        exception, None). The backend's description comes with the replica's first pool."""
        [pool] = batch["pool"]
        [payload] = batch["samples"]
        try:
            if self.failed is not None:
                raise self.failed
            samples = pickle.loads(payload)
            rows = [r for b in self.work.batches(self.backend, samples) for r in b]
            # As JSON types: torch.__version__ is a str subclass whose unpickling would import
            # torch on the driver (~2 s), which needs none of it.
            description = None if self.described else json.loads(json.dumps(self.backend.describe()))
            result = pickle.dumps(("rows", rows, description))
            self.described = True
        except Exception as exc:  # noqa: BLE001 - raised by the driver, as the local engine raises it
            result = _pickled_error(exc)
        return {"pool": [int(pool)], "replica": [self.tag], "pid": [self.pid], "result": [result]}

    def __del__(self):
        # Ray Data drops the actor's UDF when the execution ends (not when the actor is killed).
        if getattr(self, "backend", None) is not None:
            self.backend.close()
            self.backend = None


class RayEngine:
    """Run a `Work` on `--replicas` Ray Data actors; `batches(samples)` yields each pool's rows as
    it completes (not in input order; `score` restores the order)."""

    name = "ray"

    def __init__(self, work: Work, options: RayOptions):
        if options.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {options.batch_size}")
        self.ray = import_ray()  # before any data or model: a missing extra fails first
        self.work = work
        self.options = options
        self.plan: Plan | None = None
        self.tags: dict[str, str] = {}  # actor id -> "0", "1", ... in the order replicas first delivered
        self.items: Counter[str] = Counter()
        self.pids: dict[str, set[int]] = {}
        self.redelivered = 0
        self.address: str | None = None
        self._description: dict[str, Any] | None = None
        self._owns_ray = False

    @property
    def chunk_size(self) -> int:
        """Records per pool: a row of the dataset, one replica call."""
        return self.options.batch_size * SORT_POOL_BATCHES

    def start(self) -> None:
        """Join (or start) the cluster and plan the replicas; they start with the first pools."""
        if self.plan is not None:
            return
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

    def batches(self, samples: Sequence[Sample]) -> Iterator[list[Any]]:
        for _, rows in self.chunks(samples):
            yield rows

    def score(self, samples: Sequence[Sample], batch_size: int = 8) -> list[Any]:
        """Every sample's verdict, in input order (`judge_scores` calls this)."""
        done = dict(self.chunks(samples))
        return [r for k in sorted(done) for r in done[k]]

    def _dataset(self, pools: list[list[Sample]]):
        """The pools as a dataset (one row and one block each, built on the driver: no Ray task,
        so no CPU is taken from the replicas), mapped by the replica pool."""
        import ray.data

        _quiet_ray_data(self.ray)
        plan = self.plan
        rows = [{"pool": k, "samples": pickle.dumps(pool, protocol=pickle.HIGHEST_PROTOCOL)}
                for k, pool in enumerate(pools)]
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
        with warnings.catch_warnings():
            # Ray 2.60 has no named parameter for an actor's restarts yet and warns that the
            # `**ray_remote_args` it takes them through goes in 2.64 (the extra pins below it);
            # they must be finite here.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
            return dataset.map_batches(
                Replica, fn_constructor_args=(self.work, os.getcwd()), batch_size=1, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=min(plan.replicas, len(pools))),  # no idle replica
                num_cpus=plan.cpus_per_replica, num_gpus=plan.gpus_per_replica,
                max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES)

    def chunks(self, samples: Sequence[Sample]) -> Iterator[tuple[int, list[Any]]]:
        """(pool number, rows) as pools complete, each pool once."""
        from ray.data.exceptions import ExecutionTimeoutError
        from ray.exceptions import GetTimeoutError, RayActorError

        self.start()
        pools = list(batched(samples, self.chunk_size))
        if not pools:
            return
        done: set[int] = set()
        output = iter(self._dataset(pools).iter_rows())
        try:
            while True:
                try:
                    row = next(output)
                except StopIteration:
                    break
                except RayActorError as exc:
                    raise BackendUnavailable(
                        f"a Ray replica died more than {MAX_RESTARTS} times (the last: {str(exc).splitlines()[0]}; "
                        "see the Ray logs for why); the rows written so far are kept: run the same command "
                        "again to resume") from None
                except ExecutionTimeoutError:
                    # Ray Data's no-progress guard: no pool came back for that long. Seen when the
                    # only replica died for good between two pools (Ray Data sends it no more and
                    # starts no other), or when the replicas cannot be placed.
                    raise BackendUnavailable(
                        f"no Ray replica delivered a pool for {self._no_progress_s():g} s (replicas dead for good, or "
                        "no room for them on the cluster; see the Ray logs); the rows written so far are kept: run "
                        "the same command again to resume (RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S sets this "
                        "wait)") from None
                except GetTimeoutError:
                    raise BackendUnavailable(
                        f"the {self.plan.replicas} Ray replica(s) did not all start within {WAIT_FOR_REPLICAS_S} s "
                        "(the cluster's resources taken by other jobs, or a model that loads that slowly); the "
                        "rows written so far are kept: run the same command again to resume") from None
                kind, value, description = pickle.loads(row["result"])
                if kind == "error":
                    raise value
                k = int(row["pool"])
                if k in done:  # Ray ran this pool again after its rows were read: written once
                    self.redelivered += 1
                    continue
                done.add(k)
                tag = self.tags.setdefault(row["replica"], str(len(self.tags)))
                self.items[tag] += len(value)
                self.pids.setdefault(tag, set()).add(int(row["pid"]))
                if self._description is None and description is not None:
                    self._description = description
                yield k, value
                if len(done) == len(pools):
                    break  # every pool is in: no need to wait for Ray Data to wind down first
        finally:
            close = getattr(output, "close", None)
            if close is not None:
                close()  # stops the execution (and its replicas) when the driver stops early
        if len(done) != len(pools):  # never expected: Ray Data ended without some pools
            raise BackendUnavailable(
                f"Ray Data returned {len(done)} of {len(pools)} pools; the rows written so far are kept: run the "
                "same command again to resume")

    @staticmethod
    def _no_progress_s() -> float:
        from ray.data import DataContext

        return DataContext.get_current().execution_no_progress_timeout_s

    def describe(self) -> dict[str, Any] | None:
        """The backend's description, as the first replica to deliver rows gave it."""
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
            # Keyed "0", "1", ... in the order the replicas (Ray actors) first delivered rows.
            "items_per_replica": dict(self.items),
            # Seen as a new process id answering for the same actor: Ray restarted it.
            "restarts_seen": {t: len(p) - 1 for t, p in sorted(self.pids.items()) if len(p) > 1},
            "chunks_redelivered": self.redelivered,
        }

    def close(self) -> None:
        """Ray Data stops the replicas when its execution ends; a cluster this run started is stopped."""
        if self._owns_ray:
            self.ray.shutdown()
            self._owns_ray = False
