"""The remote client's own cost: `dfj judge pointwise --backend openai` against a server that
answers instantly, so that all that is measured is the client (issue "The remote client must never
be the bottleneck").

Workload: 1024x1024 JPEGs (~0.37 MB: skimage.data photos upscaled, plus seeded noise so every
image is distinct), pointwise records grouped by image as real datasets are (25 DFJ-Meta records
per image, both pairwise orders), `--concurrency 32 --batch-size 64`. Two scenarios: `shared`,
`--records` records over `--images` distinct images (400 over 40), and `unique`, one image per
record (`--unique-records`).

The server is a plain asyncio HTTP/1.1 server on 127.0.0.1 in its own process (it must not share
the client's GIL): it reads each body, counts its bytes, and answers a fixed completion.

Paths, each in a fresh client process (the real CLI, request cache off):
- `today`: the client before this change, rebuilt here: each image resized and PNG-encoded at
  PIL's default level on the event loop (once per image: a 64-entry cache by content hash),
  every request body JSON-encoded with the data URL in it, one HTTP client whose connection pool
  holds all `--concurrency` connections.
- `png`: the default now: images prepared once per run in a process pool (one worker per core),
  PNG at zlib level 1 (Z_RLE), data URLs spliced into the bodies, one single-connection client
  per request in flight.
- `original`: `--image-transport original`, the file's bytes (no decode, resize or encode here).

Reported per path: records/s (wall time of the judge run, startup excluded), client CPU seconds
per record (the client process and its image workers), bytes sent per record (request bodies as
the server received them). Also PNG encoding at zlib levels 0/1/6 for one image (time and size),
which is why the default level is 1.

    python benchmarks/remote_client.py                 # both scenarios, all paths (~3 min on 2 cores)
    python benchmarks/remote_client.py --quick         # a smoke run (tests use it)
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # benchmarks/common.py, imported where used
RESULTS_DIR = HERE / "results"
PATHS = ("today", "png", "original")
ANSWER = "<reasoning>The lighting is consistent.</reasoning><score>3</score>"


# -- the instant server ------------------------------------------------------------------------


def serve(port_file: Path) -> None:
    """An OpenAI-compatible server that answers at once; /stats gives what it received."""
    stats = {"requests": 0, "bytes": 0, "with_image": 0}
    completion = json.dumps({
        "id": "c", "object": "chat.completion", "created": 0, "model": "bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1300, "completion_tokens": 20, "total_tokens": 1320},
    }).encode()
    models = json.dumps({"object": "list", "data": [{"id": "bench", "object": "model", "owned_by": "vllm"}]}).encode()

    def reply(body: bytes) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                method, path = line.decode("latin-1").split(" ")[:2]
                length = 0
                while True:
                    header = await reader.readline()
                    if header in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = header.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                if method == "POST":
                    stats["requests"] += 1
                    stats["bytes"] += len(body)
                    stats["with_image"] += b'"image_url"' in body[:4096]
                    writer.write(reply(completion))
                elif path.endswith("/models"):
                    writer.write(reply(models))
                elif path.endswith("/stats"):
                    writer.write(reply(json.dumps(stats).encode()))
                else:
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=2**20, backlog=256)
        port_file.write_text(str(server.sockets[0].getsockname()[1]))
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class Server:
    def __init__(self, workdir: Path) -> None:
        from common import spawn_server

        port_file = workdir / "port"
        self.proc, self.url = spawn_server([sys.executable, __file__, "--serve", str(port_file)], port_file)

    def stats(self) -> dict[str, int]:
        import httpx

        return httpx.get(self.url + "/stats", timeout=10).json()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


# -- the data ----------------------------------------------------------------------------------


def build_images(folder: Path, n: int, side: int = 1024, noise: float = 10.0) -> list[Path]:
    """`n` distinct JPEGs of side x side (~0.37 MB at 1024): photos upscaled, seeded noise added."""
    import numpy as np
    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.hubble_deep_field(),
              data.immunohistochemistry()]
    bases = [np.asarray(Image.fromarray(p).convert("RGB").resize((side, side), Image.Resampling.BICUBIC), np.int16)
             for p in photos]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i:04d}.jpg"
        if not path.exists():
            rng = np.random.default_rng(i)
            pixels = np.clip(bases[i % len(bases)] + rng.normal(0, noise, (side, side, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def write_records(path: Path, images: list[Path], records: int) -> None:
    """`records` pointwise records, consecutive ones sharing an image (as datasets hold them)."""
    per = -(-records // len(images))
    with path.open("w", encoding="utf-8") as f:
        for i in range(records):
            image = images[i // per]
            f.write(json.dumps({
                "id": f"r{i:05d}", "image": f"images/{image.name}", "label": "fake" if i % 2 else "real",
                "artifacts": [],
                "response": f"<reasoning>Record {i}: the lighting on the left side disagrees with the shadow "
                            "under the chin, and the texture of the hair is smeared.</reasoning>"
                            "<answer>fake</answer>",
            }) + "\n")


# -- one client run (a fresh process per path) -------------------------------------------------


def today_backend_class():
    """The client as it was before this change (its image handling, rebuilt on today's class)."""
    import base64
    from collections import OrderedDict

    from PIL import Image

    from deepfakejudge.backends.http import HttpTransport
    from deepfakejudge.backends.openai import OpenAIBackend, smart_resize

    def encode_level6(image, budget) -> str:
        rgb = image.convert("RGB")
        height, width = smart_resize(rgb.height, rgb.width, budget)
        if (width, height) != rgb.size:
            rgb = rgb.resize((width, height), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        rgb.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

    class TodayTransport(HttpTransport):
        async def _make_client(self, headers, transport):
            # One client whose pool holds every connection, as before (the lanes all are it).
            import asyncio

            import httpx

            n = self.remote.concurrency
            client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(self.remote.timeout, pool=None),
                                       limits=httpx.Limits(max_connections=n, max_keepalive_connections=n))
            self._all_lanes = [client]
            self._lanes = asyncio.Queue()
            for _ in range(n):
                self._lanes.put_nowait(client)
            return client

    class TodayBackend(OpenAIBackend):
        http_class = TodayTransport

        async def _image_url(self, request):  # on the event loop, as before
            if request.image is None:
                return None
            cache = self.__dict__.setdefault("_old_images", OrderedDict())
            key = request.image_key
            if key is not None and key in cache:
                cache.move_to_end(key)
                return cache[key]
            url = encode_level6(request.image, self.budget)  # a str: JSON-encoded with the body
            if key is not None:
                cache[key] = url
                while len(cache) > 64:
                    cache.popitem(last=False)
            return url

    return TodayBackend


def client(path_name: str, url: str, data: Path, out: Path, concurrency: int, batch_size: int) -> dict[str, Any]:
    import deepfakejudge.backends as backends
    from deepfakejudge.backends import image_payload
    from deepfakejudge.cli import main as dfj

    if path_name == "today":
        globals()["TodayBackend"] = today_backend_class()
        backends.BACKENDS["openai"] = ("__main__", "TodayBackend", "openai")
    argv = ["judge", "pointwise", "--backend", "openai", "--base-url", url, "--model", "bench",
            "--concurrency", str(concurrency), "--batch-size", str(batch_size), "--no-cache",
            "--data", str(data), "--out", str(out), "--overwrite", "--allow-errors", "--json",
            "--image-transport", "original" if path_name == "original" else "png"]
    cpu0, children0, wall0 = time.process_time(), _children_cpu(), time.perf_counter()
    code = dfj(argv)
    wall = time.perf_counter() - wall0
    image_payload.shutdown_pools(wait=True)  # reap the workers: their CPU counts as children's
    cpu = time.process_time() - cpu0 + _children_cpu() - children0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return {"exit": code, "wall_s": wall, "cpu_s": cpu, "rows": len(rows),
            "errors": sum("error" in r for r in rows), "scored": sum(r.get("score") == 3 for r in rows)}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- the driver --------------------------------------------------------------------------------


def png_levels(image: Path) -> list[dict[str, Any]]:
    """Preparing one image for the png transport (resize + PNG + base64) at zlib levels 0, 1 and
    6 (PIL's default) with zlib's default strategy, and the project's setting (level 1, Z_RLE)."""
    import zlib

    from PIL import Image

    from deepfakejudge.backends import image_payload
    from deepfakejudge.backends.base import PixelBudget

    with Image.open(image) as img:
        rgb = img.convert("RGB")
    out = []
    chosen = image_payload.PNG_STRATEGY
    for level, strategy in ((0, zlib.Z_DEFAULT_STRATEGY), (1, zlib.Z_DEFAULT_STRATEGY), (6, zlib.Z_DEFAULT_STRATEGY),
                            (image_payload.PNG_LEVEL, chosen)):
        image_payload.PNG_STRATEGY = strategy
        try:
            image_payload.png_data_url(rgb, PixelBudget(), level)
            start = time.process_time()
            for _ in range(3):
                url = image_payload.png_data_url(rgb, PixelBudget(), level)
        finally:
            image_payload.PNG_STRATEGY = chosen
        out.append({"level": level, "strategy": {0: "default", zlib.Z_RLE: "rle"}.get(strategy, str(strategy)),
                    "cpu_ms": round((time.process_time() - start) / 3 * 1000, 1),
                    "data_url_mb": round(len(url) / 2**20, 3)})
    return out


def run_path(server: Server, path_name: str, data: Path, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    before = server.stats()
    load = os.getloadavg()[0]
    cmd = [sys.executable, __file__, "--client", path_name, "--url", server.url, "--data", str(data),
           "--results", str(workdir / f"{path_name}.jsonl"), "--concurrency", str(args.concurrency),
           "--batch-size", str(args.batch_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if proc.returncode != 0:
        return {"path": path_name, "error": proc.stderr[-2000:]}
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    after = server.stats()
    sent = after["bytes"] - before["bytes"]
    calls = after["requests"] - before["requests"]
    records = got["rows"]
    return {
        "path": path_name,
        "records": records,
        "errors": got["errors"] + (records - got["scored"]),
        "records_per_s": round(records / got["wall_s"], 2),
        "cpu_s_per_record": round(got["cpu_s"] / records, 5),
        "mb_sent_per_record": round(sent / calls / 2**20, 3) if calls else None,
        "requests": calls,
        "wall_s": round(got["wall_s"], 3),
        "load_1min_before": round(load, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=400, help="records of the shared scenario (default 400)")
    p.add_argument("--images", type=int, default=40, help="distinct images of the shared scenario (default 40)")
    p.add_argument("--unique-records", type=int, default=200,
                   help="records of the unique scenario, each with its own image (default 200)")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of {', '.join(PATHS)}")
    p.add_argument("--quick", action="store_true", help="a smoke run: 24 records over 4 images, 8 unique")
    p.add_argument("--workdir", default="/tmp/dfj-remote-client-bench", help="images and data are kept here")
    p.add_argument("--out", default=str(RESULTS_DIR), help="folder for the JSON result")
    # internal: the server and client processes
    p.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    p.add_argument("--client", default=None, help=argparse.SUPPRESS)
    p.add_argument("--url", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--results", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.serve:
        serve(Path(args.serve))
        return 0
    if args.client:
        got = client(args.client, args.url, Path(args.data), Path(args.results), args.concurrency, args.batch_size)
        print(json.dumps(got))
        return 0 if got["exit"] in (0, 1) else 1

    if args.quick:
        args.records, args.images, args.unique_records = 24, 4, 8
    paths = [x for x in args.paths.split(",") if x]
    if not set(paths) <= set(PATHS):
        p.error(f"--paths: choose from {', '.join(PATHS)}")
    workdir = Path(args.workdir)
    images = build_images(workdir / "images", max(args.images, args.unique_records))
    scenarios = {
        "shared": (args.records, images[: args.images]),
        "unique": (args.unique_records, images[: args.unique_records]),
    }
    from common import cpu_header

    result: dict[str, Any] = {
        **cpu_header("remote_client"),
        "settings": {"concurrency": args.concurrency, "batch_size": args.batch_size, "records": args.records,
                     "images": args.images, "unique_records": args.unique_records, "paths": paths},
        "jpeg_mb_mean": round(sum(p.stat().st_size for p in images) / len(images) / 2**20, 3),
        "png_levels": png_levels(images[0]),
        "runs": [],
    }
    server = Server(workdir)
    try:
        for scenario, (records, used) in scenarios.items():
            data = workdir / f"{scenario}.jsonl"
            write_records(data, used, records)
            for path_name in paths:
                print(f"{scenario} {path_name} ...", file=sys.stderr, flush=True)
                row = {"scenario": scenario, "distinct_images": len(used), **run_path(server, path_name, data, workdir, args)}
                result["runs"].append(row)
    finally:
        server.stop()
    for scenario in scenarios:
        rows = [r for r in result["runs"] if r["scenario"] == scenario and "records_per_s" in r]
        base = next((r for r in rows if r["path"] == "today"), None)
        for r in rows:
            r["speedup_vs_today"] = round(r["records_per_s"] / base["records_per_s"], 2) if base else None
    result["load_1min_at_end"] = round(os.getloadavg()[0], 2)
    from common import print_table, save_result

    path = save_result(result, args.out, "remote_client", args.quick)

    print(f"remote client on {result['machine']}, {result['date']}, load {result['load_1min_at_start']} -> "
          f"{result['load_1min_at_end']}; JPEGs {result['jpeg_mb_mean']} MB")
    print_table(result["runs"], [("scenario", "scenario", ""), ("path", "path", ""),
                                 ("distinct_images", "images", ""), ("records", "records", ""),
                                 ("records_per_s", "records/s", ".1f"), ("speedup_vs_today", "x today", ".1f"),
                                 ("cpu_s_per_record", "CPU s/record", ".4f"),
                                 ("mb_sent_per_record", "MB sent/record", ".3f"), ("errors", "errors", ""),
                                 ("load_1min_before", "load", ".2f")])
    print("PNG levels (one image):", result["png_levels"])
    print(f"saved {path}")
    failed = [r for r in result["runs"] if "error" in r or r.get("errors")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
