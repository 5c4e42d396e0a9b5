"""Several servers behind one run (`--base-url` repeated): throughput with 1 and 2 servers, a
server killed mid-run, and what the pool costs the client.

Each server is its own process on 127.0.0.1 standing in for a GPU server: it answers at most
`--slots` requests at once, each after `--service` seconds (a batch slot busy for the request's
prefill and decode), so one server gives at most slots/service requests/s. The client is the
project's `OpenAIBackend` (text-only requests, the request cache is not involved), at
`--concurrency` requests in flight in all.

Paths:
- `one`: one `--base-url` (the single-server path, no pool).
- `two`: two servers (a pool): expected twice `one`, as each gets half the requests in flight.
- `two, one killed`: two servers, one SIGKILLed a third of the way through: its requests in
  flight are asked again on the other; every request answered once.
- `client cost`: CPU seconds of the client per request against servers that answer at once
  (`--slots 100000 --service 0`), one URL and a pool of two, interleaved, twice each, the lower
  kept: the pool's own overhead.

    python benchmarks/replicas.py             # ~1 min on 2 cores
    python benchmarks/replicas.py --quick     # a smoke run (tests use it)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # benchmarks/common.py, imported where used
RESULTS_DIR = HERE / "results"
ANSWER = "<reasoning>The lighting is consistent.</reasoning><score>3</score>"


def serve(port_file: Path, slots: int, service: float) -> None:
    """An OpenAI-compatible server with `slots` requests served at once, each `service` s long."""
    completion = json.dumps({
        "id": "c", "object": "chat.completion", "created": 0, "model": "bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
    }).encode()
    models = json.dumps({"object": "list", "data": [{"id": "bench", "object": "model", "owned_by": "vllm"}]}).encode()

    def reply(body: bytes) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body

    async def main() -> None:
        busy = asyncio.Semaphore(slots)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while line := await reader.readline():
                    method, path = line.decode("latin-1").split(" ")[:2]
                    length = 0
                    while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                        name, _, value = header.decode("latin-1").partition(":")
                        if name.strip().lower() == "content-length":
                            length = int(value)
                    if length:
                        await reader.readexactly(length)
                    if method == "POST":
                        async with busy:
                            if service:
                                await asyncio.sleep(service)
                        writer.write(reply(completion))
                    else:
                        writer.write(reply(models))
                    await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=512)
        port_file.write_text(str(server.sockets[0].getsockname()[1]))
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class Server:
    def __init__(self, workdir: Path, name: str, slots: int, service: float) -> None:
        from common import spawn_server

        port_file = workdir / f"port-{name}"
        self.proc, self.url = spawn_server([sys.executable, __file__, "--serve", str(port_file), "--slots", str(slots),
                                            "--service", str(service)], port_file)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def run(urls: list[str], n: int, concurrency: int, kill: Server | None = None, kill_after: float = 0.0) -> dict[str, Any]:
    from deepfakejudge.backends import ChatRequest, GenerationConfig, LoadOptions, RemoteOptions
    from deepfakejudge.backends.openai import OpenAIBackend

    base = urls[0] if len(urls) == 1 else tuple(urls)
    backend = OpenAIBackend(LoadOptions(model="bench", remote=RemoteOptions(
        base_url=base, concurrency=concurrency, max_retries=5, backoff_base=0.1, backoff_cap=2.0, image_workers=0)))
    requests = [ChatRequest(text=f"item {i}") for i in range(n)]
    try:
        timer = threading.Timer(kill_after, kill.kill) if kill is not None else None
        cpu, started = time.process_time(), time.perf_counter()
        if timer is not None:
            timer.start()
        results = backend.generate_each(requests, GenerationConfig(max_new_tokens=8, top_logprobs=0))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        if timer is not None:
            timer.cancel()
        info = backend.describe()
    finally:
        backend.close()
    answered = sum(1 for r in results if not isinstance(r, Exception))
    return {"requests": n, "answered": answered, "seconds": round(seconds, 3),
            "requests_per_s": round(n / seconds, 1), "client_cpu_ms_per_request": round(1000 * cpu / n, 3),
            "per_server": info.get("replicas")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--requests", type=int, default=800)
    p.add_argument("--slots", type=int, default=8, help="requests a server answers at once (default 8)")
    p.add_argument("--service", type=float, default=0.1, help="seconds per request on a server (default 0.1)")
    p.add_argument("--cost-requests", type=int, default=3000, help="requests of the client-cost paths")
    p.add_argument("--quick", action="store_true", help="a smoke run: few requests")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.slots, args.service)
        return 0
    if args.quick:
        args.requests, args.cost_requests = 64, 200
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="dfj-replicas-"))  # the servers' port files
    concurrency = 2 * args.slots  # enough to fill two servers
    rows: list[dict[str, Any]] = []
    servers = [Server(workdir, f"s{k}", args.slots, args.service) for k in range(2)]
    instant = [Server(workdir, f"i{k}", 100000, 0.0) for k in range(2)]
    try:
        rows.append({"path": "one", **run([servers[0].url], args.requests, concurrency)})
        rows.append({"path": "two", **run([s.url for s in servers], args.requests, concurrency)})
        expected = args.requests / (2 * args.slots / args.service)
        rows.append({"path": "two, one killed", **run([s.url for s in servers], args.requests, concurrency,
                                                       kill=servers[1], kill_after=expected / 3)})
        # Interleaved, twice each, the lower CPU kept: the machine is shared and warms up.
        cost: dict[str, dict[str, Any]] = {}
        for path, urls in [("client cost, one URL", instant[:1]), ("client cost, pool of two", instant)] * 2:
            row = {"path": path, **run([s.url for s in urls], args.cost_requests, 32)}
            if path not in cost or row["client_cpu_ms_per_request"] < cost[path]["client_cpu_ms_per_request"]:
                cost[path] = row
        rows.extend(cost.values())
    finally:
        for s in servers + instant:
            s.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    one, two = rows[0]["requests_per_s"], rows[1]["requests_per_s"]
    cost_one, cost_two = rows[3]["client_cpu_ms_per_request"], rows[4]["client_cpu_ms_per_request"]
    from common import cpu_header

    result = {
        **cpu_header("replicas"),
        "settings": {"slots": args.slots, "service_s": args.service, "concurrency": concurrency,
                     "requests": args.requests, "cost_requests": args.cost_requests, "quick": args.quick},
        "ceiling_per_server_requests_per_s": round(args.slots / args.service, 1),
        "rows": rows,
        "speedup_two_over_one": round(two / one, 3),
        "pool_client_cost_ratio": round(cost_two / cost_one, 3),
    }
    print(f"{'path':<26} {'req/s':>8} {'answered':>9} {'client ms/req':>14}  per server (answered/failed/out)")
    for r in rows:
        per = "; ".join(f"{c['answered']}/{c['failed']}/{c['taken_out']}" for c in (r["per_server"] or {}).values())
        print(f"{r['path']:<26} {r['requests_per_s']:>8} {r['answered']:>6}/{r['requests']:<4} "
              f"{r['client_cpu_ms_per_request']:>12}  {per}")
    print(f"two servers / one: {result['speedup_two_over_one']}x (ceiling {result['ceiling_per_server_requests_per_s']} "
          f"req/s per server); client CPU per request, pool / one URL: {result['pool_client_cost_ratio']}x")
    name = f"replicas_{'quick_' if args.quick else ''}{result['machine'].split('(')[-1].rstrip(')').replace(' ', '-')}_" \
           f"{result['date'][:10]}.json"
    path = args.out / name
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
