"""How the remote client prepares images (backends/image_payload.py): once per image per run,
across records, both pairwise orders and several backends; in a process pool where a bad image
costs its own row; and the `original` transport, whose pixels a server resizing with the same
budget (here `dfj serve` on the tiny model) turns into exactly the local backend's model input."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serving import RecordingChatServer

from deepfakejudge import PairwiseJudge, PointwiseJudge
from deepfakejudge.backends import (
    BackendError,
    ChatRequest,
    GenerationConfig,
    LoadOptions,
    PixelBudget,
    RemoteOptions,
    image_payload,
)
from deepfakejudge.backends.image_payload import PayloadCache, json_body, png_data_url
from deepfakejudge.backends.openai import OpenAIBackend
from deepfakejudge.cli import main
from deepfakejudge.data import load_records, open_image
from deepfakejudge.records import RowError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ANSWER = "<reasoning>fine</reasoning><score>4</score>"
BUDGET = PixelBudget(3136, 64 * 28 * 28)


@pytest.fixture
def recorder():
    server = RecordingChatServer(ANSWER)
    yield server
    server.close()


@pytest.fixture
def fresh_cache(monkeypatch):
    """A cache of this test's own, in place of the process's shared one."""
    cache = PayloadCache()
    monkeypatch.setattr(image_payload, "_SHARED", cache)
    return cache


def backend(url, transport="png", workers=0):
    return OpenAIBackend(LoadOptions(model="m", budget=BUDGET, remote=RemoteOptions(
        base_url=url, image_transport=transport, image_workers=workers, max_retries=0, timeout=20.0)))


def write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"im{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (90 + 10 * i, 130, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def pair_records(folder: Path, images: list[Path], per_image: int) -> Path:
    rows = []
    for i in range(per_image * len(images)):
        rows.append({"id": f"r{i}", "image": images[i // per_image].name, "label": "fake",
                     "response": f"<reasoning>r{i}</reasoning><answer>fake</answer>",
                     "response_a": f"<reasoning>a{i}</reasoning><answer>fake</answer>",
                     "response_b": f"<reasoning>b{i}</reasoning><answer>real</answer>"})
    path = folder / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_each_image_is_prepared_once_across_records_orders_and_backends(recorder, fresh_cache, tmp_path):
    images = write_images(tmp_path, 3)
    dataset = load_records(pair_records(tmp_path, images, per_image=4))
    b = backend(recorder.url, workers=2)  # a real process pool
    try:
        verdicts = PairwiseJudge(b, generation=GenerationConfig(max_new_tokens=8)).compare(
            dataset.samples, both_orders=True, batch_size=5)
        assert not [v for v in verdicts if isinstance(v, RowError)]
        # 12 records x 2 orders = 24 requests, 3 distinct images: 3 preparations.
        assert len(recorder.urls) == 24
        assert fresh_cache.prepared == 3 and fresh_cache.hits == 21 and len(fresh_cache) == 3
        # What was sent is the image resized to the budget, as PNG: one URL per image.
        expected = {png_data_url(open_image(s).image, BUDGET).decode() for s in dataset.samples}
        assert set(recorder.urls) == expected and len(expected) == 3
        # Another backend of the process (bootstrap's second role, pointwise judging after
        # pairwise) reuses them: no new preparation.
        other = backend(recorder.url, workers=2)
        try:
            PointwiseJudge(other, generation=GenerationConfig(max_new_tokens=8)).score(dataset.samples, batch_size=12)
        finally:
            other.close()
        assert len(recorder.urls) == 36 and fresh_cache.prepared == 3
        # Another budget is another payload.
        third = OpenAIBackend(LoadOptions(model="m", budget=PixelBudget(3136, 16 * 28 * 28),
                                          remote=RemoteOptions(base_url=recorder.url, image_workers=0)))
        try:
            third.generate([ChatRequest("t", open_image(dataset.samples[0]).image, image_key="k0")],
                           GenerationConfig(max_new_tokens=2))
        finally:
            third.close()
        assert fresh_cache.prepared == 4
    finally:
        b.close()


def test_the_cache_is_bounded_and_forgets_failures():
    import concurrent.futures

    cache = PayloadCache(max_bytes=10)

    def ready(value):
        f = concurrent.futures.Future()
        f.set_result(value)
        return f

    assert cache.get("a", lambda: ready(b"12345")).result() == b"12345"
    assert cache.get("b", lambda: ready(b"123456")).result() == b"123456"
    assert len(cache) == 1 and cache.size == 6  # "a" dropped: 11 bytes > 10
    assert cache.get("b", lambda: ready(b"other")).result() == b"123456" and cache.hits == 1
    failed = concurrent.futures.Future()
    failed.set_exception(ValueError("broken"))
    with pytest.raises(ValueError):
        cache.get("c", lambda: failed).result()
    assert cache.get("c", lambda: ready(b"ok")).result() == b"ok"  # asked again, not the failure
    assert cache.prepared == 4


def test_original_transport_sends_the_files_bytes(recorder, fresh_cache, tmp_path):
    images = write_images(tmp_path, 2)
    dataset = load_records(pair_records(tmp_path, images, per_image=2))
    b = backend(recorder.url, transport="original", workers=2)
    try:
        PointwiseJudge(b, generation=GenerationConfig(max_new_tokens=8)).score(dataset.samples)
        # An image known only as pixels (no file) goes as PNG, not as something made up.
        b.generate([ChatRequest("t", image=Image.new("RGB", (50, 40)), image_key="pixels-only")],
                   GenerationConfig(max_new_tokens=2))
        assert b.describe()["image_format"] == "original"
    finally:
        b.close()
    sent = [base64.b64decode(u.split(",", 1)[1]) for u in recorder.urls[:4]]
    assert [u.split(",", 1)[0] for u in recorder.urls[:4]] == ["data:image/jpeg;base64"] * 4
    # Requests are in flight together, so they arrive in any order: each file's exact bytes, twice.
    expected = [images[0].read_bytes()] * 2 + [images[1].read_bytes()] * 2
    assert sorted(sent) == sorted(expected)
    assert recorder.urls[4].startswith("data:image/png;base64,")
    assert fresh_cache.prepared == 3


def test_a_bad_image_costs_its_own_row_with_the_pool(recorder, fresh_cache, tmp_path, capsys):
    rng = np.random.default_rng(3)
    for name, shape in (("good0.png", (60, 80, 3)), ("good1.png", (70, 50, 3)), ("thin.png", (2, 500, 3))):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    rows = [{"id": n.split(".")[0], "image": n, "label": "real", "response": "<reasoning>x</reasoning><answer>real</answer>"}
            for n in ("good0.png", "thin.png", "corrupt.jpg", "good1.png")]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    code = main(["judge", "pointwise", "--backend", "openai", "--base-url", recorder.url, "--model", "m",
                 "--no-cache", "--max-pixels", str(BUDGET.max_pixels), "--image-workers", "2", "--max-retries", "0",
                 "--batch-size", "4", "--data", str(data), "--out", str(out), "--json"])
    assert code == 1  # rows with errors, the run finished
    got = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert got["good0"]["score"] == 4 and got["good1"]["score"] == 4
    assert got["corrupt"]["field"] == "image" and "decode" in got["corrupt"]["error"]
    # Opens fine, but no Qwen resize exists for it: the worker's error is this row's, not the run's.
    assert "aspect ratio" in got["thin"]["error"] and "image: cannot prepare it" in got["thin"]["error"]
    assert len(recorder.urls) == 2
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["backend"]["image_format"] == "png"


def test_a_corrupt_file_behind_a_request_fails_that_request_only(recorder, fresh_cache):
    good = Image.new("RGB", (64, 48), (10, 20, 30))
    b = backend(recorder.url, transport="png", workers=2)
    try:
        out = b.generate_each([
            ChatRequest("a", image=good, image_key="good"),
            ChatRequest("b", image=good, image_key="bad", image_bytes=b"GIF89a garbage"),
            ChatRequest("c", image=good, image_key="good"),
        ], GenerationConfig(max_new_tokens=2))
        assert isinstance(out[1], BackendError) and "cannot prepare it" in str(out[1])
        assert out[0].text == ANSWER and out[2].text == ANSWER
        # The pool still works afterwards.
        again = b.generate_each([ChatRequest("d", image=good.rotate(90), image_key="good2")],
                                GenerationConfig(max_new_tokens=2))
        assert again[0].text == ANSWER
    finally:
        b.close()


def test_json_body_splices_image_urls_unchanged():
    url = b"data:image/png;base64," + base64.b64encode(bytes(range(256)) * 50)
    payload = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": 'quote " and \u00e9'}]}]}
    decoded = json.loads(json_body(payload))
    assert decoded["messages"][0]["content"][0]["image_url"]["url"] == url.decode()
    assert decoded["messages"][0]["content"][1]["text"] == 'quote " and \u00e9'
    assert json.loads(json_body({"a": [1, {"b": None}]})) == {"a": [1, {"b": None}]}


# -- exact pixels through `dfj serve` ----------------------------------------------------------


class _PixelsSeen:
    """Stands in for the served model: records the pixel values the served backend's processor
    builds for each request, and answers without running the model."""

    def __init__(self, inner):
        from deepfakejudge.backends.base import Capabilities

        self.inner, self.name, self.seen = inner, "hf", {}
        self.capabilities = Capabilities(logprobs=False, choice_probs=False)

    def _record(self, requests):
        for r in requests:
            vision, _ = self.inner.processor.image_inputs([r])
            self.seen[r.text] = (r.image_key, vision["pixel_values"], vision["image_grid_thw"])

    def generate_each(self, requests, config):
        from deepfakejudge.backends.base import Generation

        self._record(requests)
        return [Generation(text=ANSWER, finish_reason="stop") for _ in requests]

    generate = generate_each

    def describe(self):
        return {"backend": "hf", "model": "tiny"}

    def close(self):
        pass


@pytest.fixture(scope="module")
def tiny_serve(tiny_backend):
    import socket
    import time

    import uvicorn

    from deepfakejudge.serve.app import create_app
    from deepfakejudge.serve.settings import ServeSettings

    seen = _PixelsSeen(tiny_backend)
    app = create_app(seen, ServeSettings(model_name="tiny", max_batch=16))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}/v1", seen
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.parametrize("transport", ["original", "png"])
def test_served_pixels_equal_the_local_backends_for_the_example_images(tiny_serve, tiny_backend, transport, fresh_cache):
    """The tiny model served by `dfj serve` with the local backend's budget: whatever the
    transport, its processor builds from what the client sent exactly the pixel values the local
    backend builds from the file, for every image of examples/."""
    import torch

    url, seen = tiny_serve
    seen.seen.clear()
    described = tiny_backend.describe()
    assert (described["min_pixels"], described["max_pixels"]) == (BUDGET.min_pixels, BUDGET.max_pixels)
    dataset = load_records(EXAMPLES / "pointwise.jsonl")
    by_image = {}
    for s in dataset.samples:
        by_image.setdefault(s.image, s)
    samples = list(by_image.values())
    assert len(samples) == len(list((EXAMPLES / "images").iterdir()))  # the whole image set
    b = OpenAIBackend(LoadOptions(model="tiny", budget=BUDGET, remote=RemoteOptions(
        base_url=url, image_transport=transport, image_workers=2, max_retries=0)))
    judge = PointwiseJudge(b, generation=GenerationConfig(max_new_tokens=8))
    try:
        requests = [judge.request(s, open_image(s)) for s in samples]
        b.generate(requests, GenerationConfig(max_new_tokens=8))
    finally:
        b.close()
    assert len(seen.seen) == len(samples)
    for sample, request in zip(samples, requests):
        key, pixels, grid = seen.seen[request.text]
        local, _ = tiny_backend.processor.image_inputs([ChatRequest("", image=open_image(sample).image)])
        file_hash = hashlib.sha256(sample.image.read_bytes()).hexdigest()
        assert (key == file_hash) == (transport == "original"), sample.image.name  # the file itself went
        assert torch.equal(grid, local["image_grid_thw"]), sample.image.name
        assert torch.equal(pixels, local["pixel_values"]), sample.image.name


def test_the_benchmark_runs_every_path(tmp_path):
    """benchmarks/remote_client.py end to end (--quick): every path ran without an error row, and
    the figures it reports are the ones it measured (timings are not asserted)."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "remote_client.py"
    proc = subprocess.run([sys.executable, str(script), "--quick", "--workdir", str(tmp_path / "work"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = (tmp_path / "out").glob("remote_client_quick_*.json")
    result = json.loads(path.read_text())
    runs = {(r["scenario"], r["path"]): r for r in result["runs"]}
    assert set(runs) == {(s, p) for s in ("shared", "unique") for p in ("today", "png", "original")}
    for (scenario, _), r in runs.items():
        assert r["errors"] == 0 and r["records"] == (24 if scenario == "shared" else 8) == r["requests"]
        assert r["records_per_s"] > 0 and r["cpu_s_per_record"] > 0
    jpeg_mb = result["jpeg_mb_mean"]
    # The original transport sends the JPEG (base64: 4/3 of it); PNG several times more.
    assert abs(runs["shared", "original"]["mb_sent_per_record"] - jpeg_mb * 4 / 3) < 0.05
    assert runs["shared", "png"]["mb_sent_per_record"] > 3 * runs["shared", "original"]["mb_sent_per_record"]
    assert runs["shared", "today"]["speedup_vs_today"] == 1.0


def test_workers_exit_when_the_client_is_killed():
    """A client killed with SIGKILL (as `dfj bootstrap`'s kill/resume does) leaves no image worker
    running, nor holding its stdout open."""
    import os
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import multiprocessing, time\n"
        "from PIL import Image\n"
        "from deepfakejudge.backends.base import ChatRequest, PixelBudget\n"
        "from deepfakejudge.backends.image_payload import ImagePreparer\n"
        "if __name__ == '__main__':\n"
        "    p = ImagePreparer(PixelBudget(), workers=2)\n"
        "    p.url(ChatRequest('t', Image.new('RGB', (64, 64)), image_key='k')).result()\n"
        "    print(*[c.pid for c in multiprocessing.active_children()], flush=True)\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    workers = [int(pid) for pid in proc.stdout.readline().split()]
    assert workers, proc.stderr.read()[-2000:]  # started on demand: one task, at least one worker
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)  # would hang while a worker holds the pipes

    def running(pid):
        try:
            state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
        except (FileNotFoundError, IndexError):
            return False
        return state != "Z"  # a zombie has exited (its new parent may not reap it)

    deadline = time.time() + 20
    while time.time() < deadline and any(running(pid) for pid in workers):
        time.sleep(0.2)
    assert not [pid for pid in workers if running(pid)]
    for pid in workers:  # nothing left behind, whatever happened above
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
