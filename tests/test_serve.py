"""`dfj serve` for real: the tiny Qwen2.5-VL served by a subprocess on 127.0.0.1, judged through
`dfj judge --backend openai`, loaded by 32 concurrent clients, sent bad requests, and killed
mid-run. All traffic stays on loopback; every loop is bounded in count and time."""

import asyncio
import base64
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serving import NAME, SMALL_PIXELS, Server, free_port

from deepfakejudge.cli import main

KEY = "test-key-123"
RESPONSE = "<reasoning>The fence is smeared in the upper left.</reasoning> <answer>fake</answer>"
OTHER = "<reasoning>Shadows agree.</reasoning> <answer>real</answer>"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("serve-root")


@pytest.fixture(scope="module")
def server(tiny_model_dir, root, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    s = Server(tiny_model_dir, free_port(), log, "--api-key", KEY, "--allowed-root", str(root),
               "--max-image-pixels", "250000", "--max-body-bytes", "2000000", "--max-logprobs", "2000",
               "--max-text-chars", "20000", "--max-batch", "32")
    yield s
    s.stop()


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40 + 9 * i, 60 + 7 * i, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
        rows.append({"id": f"s{i}", "image": f"im{i}.png", "label": ("fake", "real", "edited")[i % 3],
                     "response": RESPONSE if i % 2 else OTHER, "response_a": RESPONSE, "response_b": OTHER})
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def remote_args(server, *extra):
    return ["--backend", "openai", "--base-url", server.url + "/v1", "--api-key-env", "DFJ_TEST_SERVE_KEY",
            "--top-logprobs", "2000", *extra]


def test_remote_judging_equals_local_and_reruns_from_the_cache(server, tiny_model_dir, dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DFJ_TEST_SERVE_KEY", KEY)
    cache = str(tmp_path / "requests.sqlite")
    common = ["--data", str(dataset), "--device", "cpu", "--max-pixels", SMALL_PIXELS]
    runs = [("pointwise", "score-only", []), ("pairwise", "score-only", []),
            ("pointwise", "generate", ["--max-new-tokens", "16"])]
    for kind, mode, extra in runs:
        local, remote = tmp_path / f"{kind}-{mode}-local.jsonl", tmp_path / f"{kind}-{mode}-remote.jsonl"
        assert main(["judge", kind, "--model", str(tiny_model_dir), "--out", str(local), "--mode", mode,
                     *common, *extra]) == 0
        assert main(["judge", kind, "--model", NAME, "--out", str(remote), "--mode", mode, *common, *extra,
                     *remote_args(server, "--cache", cache)]) == 0
        a, b = rows(local), rows(remote)
        assert [r["id"] for r in a] == [r["id"] for r in b] == [f"s{i}" for i in range(6)]
        for x, y in zip(a, b):
            if kind == "pointwise":
                assert x["score"] == y["score"] and x["raw"] == y["raw"]
                if x["probs"] is None:
                    assert y["probs"] is None
                else:
                    assert y["probs"] == pytest.approx(x["probs"], abs=1e-5)
                    assert y["choice_mass"] == pytest.approx(x["choice_mass"], rel=1e-4)
            else:
                assert x["choice"] == y["choice"] and y["p_a"] == pytest.approx(x["p_a"], abs=1e-5)
                assert [o["p_a"] for o in y["orders"]] == pytest.approx([o["p_a"] for o in x["orders"]], abs=1e-5)
        summary = json.loads((tmp_path / f"{kind}-{mode}-remote.summary.json").read_text())
        assert summary["backend"]["server"] == "deepfakejudge" and KEY not in json.dumps(summary)
    capsys.readouterr()

    # Rerun every command from scratch: the cache answers, the server sees no request.
    before = server.health()["requests"]
    for kind, mode, extra in runs:
        again = tmp_path / f"{kind}-{mode}-again.jsonl"
        assert main(["judge", kind, "--model", NAME, "--out", str(again), "--mode", mode, *common, *extra,
                     *remote_args(server, "--cache", cache)]) == 0
        assert rows(again) == rows(tmp_path / f"{kind}-{mode}-remote.jsonl")
    assert server.health()["requests"] == before
    assert KEY.encode() not in Path(cache).read_bytes()


async def _load(url, clients, per_client):
    rng = np.random.default_rng(7)
    images = []
    for i in range(clients):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (30 + i, 50, 3), dtype=np.uint8)).save(buf, "PNG")
        images.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())

    async def client(i, http):
        codes = []
        for j in range(per_client):
            body = {"model": NAME, "max_tokens": 4, "logprobs": True, "top_logprobs": 2, "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": images[i]}},
                                             {"type": "text", "text": f"client {i} request {j}: real or fake?"}]}]}
            r = await http.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
            ok = r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None
            # OpenAI's usage block: the image's tokens are prompt tokens; at most max_tokens generated.
            ok = ok and r.json()["usage"]["prompt_tokens"] > 10 and 1 <= r.json()["usage"]["completion_tokens"] <= 4
            codes.append(r.status_code if ok else f"{r.status_code}: {r.text[:200]}")
        return codes

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        return await asyncio.gather(*(client(i, http) for i in range(clients)))


def test_load_32_concurrent_clients_are_batched(server):
    clients, per_client = 32, 7
    before = server.health()
    started = time.perf_counter()
    codes = asyncio.run(asyncio.wait_for(_load(server.url, clients, per_client), timeout=120))
    elapsed = time.perf_counter() - started
    after = server.health()
    flat = [c for per in codes for c in per]
    assert len(flat) == clients * per_client == 224 and flat == [200] * 224
    items, batches = after["items"] - before["items"], after["batches"] - before["batches"]
    mean = items / batches
    print(f"\nload: {len(flat)} requests from {clients} clients in {elapsed:.2f} s "
          f"({len(flat) / elapsed:.1f} req/s); {batches} batches, mean batch size {mean:.2f}, "
          f"max {after['max_batch_size']}")
    assert items == 224 and mean > 1.0 and after["failed_items"] == before["failed_items"]


def test_requests_queued_behind_a_busy_model_form_full_batches(tiny_backend, test_images, monkeypatch):
    """The batching rule, observed without timing: while the model works on one request, 20 more
    queue; then they run as batches of --max-batch (8, 8, 4), each request getting its own answer."""
    from deepfakejudge.backends.base import ChatRequest, GenerationConfig
    from deepfakejudge.backends.hf import HFBackend
    from deepfakejudge.serve.batcher import Batcher

    sizes = []
    original = HFBackend.generate

    def counting(self, requests, config):
        sizes.append(len(requests))
        return original(self, requests, config)

    monkeypatch.setattr(HFBackend, "generate", counting)
    config = GenerationConfig(max_new_tokens=2)
    requests = [ChatRequest(text=f"request {i}: real or fake?", image=test_images["tiny"]) for i in range(21)]

    async def scenario():
        batcher = Batcher(tiny_backend, window=0.0, max_batch=8)
        batcher.start()
        gate = threading.Event()
        busy = batcher.loop.run_in_executor(batcher._model_thread, gate.wait)  # the model is working
        try:
            first = asyncio.ensure_future(batcher.generate(requests[0], config))
            # Up to 30 s: the loops end as soon as the state is reached; a loaded CI machine is slow.
            for _ in range(3000):  # until the collector has sent the first request to the model
                if batcher.stats.batches == 1:
                    break
                await asyncio.sleep(0.01)
            rest = [asyncio.ensure_future(batcher.generate(r, config)) for r in requests[1:]]
            for _ in range(3000):
                if batcher.queued == 20:
                    break
                await asyncio.sleep(0.01)
            assert (batcher.stats.batches, batcher.queued) == (1, 20)
        finally:
            gate.set()  # never leave the model thread blocked
        await busy
        answers = await asyncio.gather(first, *rest)
        stats = batcher.stats.as_dict()
        await batcher.stop()
        return answers, stats

    answers, stats = asyncio.run(asyncio.wait_for(scenario(), timeout=120))
    assert sizes == [1, 8, 8, 4]
    assert stats == {"batches": 4, "items": 21, "mean_batch_size": 5.25, "max_batch_size": 8, "failed_items": 0}
    assert len(answers) == 21 and all(a.text is not None for a in answers)


def _chat(image_url, text="Is it real?", **over):
    body = {"model": NAME, "max_tokens": 2,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                                      {"type": "text", "text": text}]}]}
    body.update(over)
    return body


def _png(w, h, color=(10, 200, 30)):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "PNG")
    return buf.getvalue()


def test_bad_requests_get_the_right_4xx(server, root, tiny_model_dir, tmp_path):
    auth = {"Authorization": f"Bearer {KEY}"}
    ok_url = "data:image/png;base64," + base64.b64encode(_png(40, 30)).decode()
    (root / "inside.png").write_bytes(_png(50, 40))
    (tmp_path / "outside.png").write_bytes(_png(50, 40))
    post = lambda path, **kw: httpx.post(server.url + path, timeout=30, **kw)

    cases = {
        "wrong key": (post("/v1/chat/completions", json=_chat(ok_url), headers={"Authorization": "Bearer nope"}), 401, "API key"),
        "no key": (post("/v1/chat/completions", json=_chat(ok_url)), 401, "API key"),
        "models without key": (httpx.get(server.url + "/v1/models"), 401, "API key"),
        "bad JSON": (post("/v1/chat/completions", content=b'{"model": ', headers=auth), 400, "not valid JSON"),
        "oversize image": (post("/v1/chat/completions", headers=auth, json=_chat(
            "data:image/png;base64," + base64.b64encode(_png(600, 600)).decode())), 413, "--max-image-pixels"),
        "body too large": (post("/v1/chat/completions", headers=auth, content=b"x" * 2_100_000), 413, "--max-body-bytes"),
        "path outside root": (post("/v1/chat/completions", headers=auth, json=_chat(f"file://{tmp_path / 'outside.png'}")),
                              403, "--allowed-root"),
        "escape with ..": (post("/v1/chat/completions", headers=auth, json=_chat(f"file://{root}/../{tmp_path.name}/outside.png")),
                           403, "--allowed-root"),
        "judge path outside": (post("/v1/judge/pointwise", headers=auth, json={
            "image_path": str(tmp_path / "outside.png"), "label": "fake", "response": RESPONSE}), 403, "--allowed-root"),
        "remote URL": (post("/v1/chat/completions", headers=auth, json=_chat("https://example.com/a.png")), 400, "not fetched"),
        "wrong model": (post("/v1/chat/completions", headers=auth, json=_chat(ok_url, model="gpt-4o")), 404, NAME),
        "text too long": (post("/v1/chat/completions", headers=auth, json=_chat(ok_url, "x" * 20_001)), 413, "--max-text-chars"),
        "too many logprobs": (post("/v1/chat/completions", headers=auth, json=_chat(ok_url, logprobs=True, top_logprobs=5000)),
                              400, "--max-logprobs"),
        "stream": (post("/v1/chat/completions", headers=auth, json=_chat(ok_url, stream=True)), 400, "stream"),
        "corrupt image": (post("/v1/chat/completions", headers=auth, json=_chat("data:image/png;base64," +
                          base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 30).decode())), 400, "cannot decode"),
        "unknown label": (post("/v1/judge/pointwise", headers=auth, json={
            "image": base64.b64encode(_png(30, 30)).decode(), "label": "deepfake", "response": RESPONSE}), 400, "label"),
        "prefix without continue": (post("/v1/chat/completions", headers=auth, json=_chat(
            ok_url, messages=_chat(ok_url)["messages"] + [{"role": "assistant", "content": "<answer>"}])), 400,
            "continue_final_message"),
    }
    for name, (response, status, needle) in cases.items():
        assert response.status_code == status, (name, response.text)
        error = response.json()["error"]
        assert needle in error["message"], (name, error)
        assert "Traceback" not in response.text and "File \"" not in response.text, name

    # The same server still answers good requests, local paths under the root included.
    good = post("/v1/chat/completions", headers=auth, json=_chat(f"file://{root}/inside.png", logprobs=True, top_logprobs=3))
    assert good.status_code == 200 and len(good.json()["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 3
    continued = post("/v1/chat/completions", headers=auth, json=_chat(
        ok_url, max_tokens=1, logprobs=True, top_logprobs=5, continue_final_message=True, add_generation_prompt=False,
        messages=_chat(ok_url)["messages"] + [{"role": "assistant", "content": "<reasoning></reasoning>\n<score>"}]))
    assert continued.status_code == 200
    upload = post("/v1/judge/pointwise", headers=auth, files={"image": ("a.png", _png(60, 40), "image/png")},
                  data={"label": "fake", "response": RESPONSE, "mode": "score-only"})
    assert upload.status_code == 200, upload.text
    verdict = upload.json()
    assert verdict["score"] in range(1, 6) and sum(verdict["probs"].values()) == pytest.approx(1.0)
    pair = post("/v1/judge/pairwise", headers=auth, json={"image_path": "inside.png", "label": "real",
                "response_a": RESPONSE, "response_b": OTHER, "mode": "score-only"})
    assert pair.status_code == 200 and pair.json()["choice"] in ("A", "B") and len(pair.json()["orders"]) == 2
    assert httpx.get(server.url + "/health").status_code == 200  # liveness needs no key
    listed = httpx.get(server.url + "/v1/models", headers=auth).json()["data"][0]
    assert listed["id"] == NAME and listed["root"] == str(tiny_model_dir) and len(listed["dfj_fingerprint"]) == 16


def test_models_lists_the_weights_a_client_cache_keys_on(tiny_model_dir, tmp_path):
    """`root`/`parent` as vLLM lists a checkpoint and an adapter; the fingerprint follows the files."""
    from deepfakejudge.backends.hf import folder_fingerprint
    from deepfakejudge.serve.app import listed_weights

    base = {"model": str(tiny_model_dir), "adapter": None, "model_files": folder_fingerprint(tiny_model_dir)}
    assert listed_weights(base)["root"] == str(tiny_model_dir) and "parent" not in listed_weights(base)
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    tuned = {**base, "adapter": str(adapter), "adapter_files": folder_fingerprint(adapter)}
    assert (listed_weights(tuned)["root"], listed_weights(tuned)["parent"]) == (str(adapter), str(tiny_model_dir))
    before = listed_weights(tuned)["dfj_fingerprint"]
    (adapter / "adapter_model.safetensors").write_bytes(b"retrained")
    after = listed_weights({**tuned, "adapter_files": folder_fingerprint(adapter)})["dfj_fingerprint"]
    assert before != after and before != listed_weights(base)["dfj_fingerprint"]


def test_kill_the_server_mid_run_then_rerun_every_id_exactly_once(tiny_model_dir, tmp_path):
    n = 20
    Image.new("RGB", (40, 40), (1, 2, 3)).save(tmp_path / "a.png")
    (tmp_path / "d.jsonl").write_text("".join(
        json.dumps({"id": f"k{i}", "image": "a.png", "label": "fake", "response": f"{RESPONSE} #{i}"}) + "\n"
        for i in range(n)))
    port = free_port()
    out = tmp_path / "k.jsonl"
    client = [sys.executable, "-m", "deepfakejudge", "judge", "pointwise", "--model", NAME, "--backend", "openai",
              "--base-url", f"http://127.0.0.1:{port}/v1", "--data", str(tmp_path / "d.jsonl"), "--out", str(out),
              "--max-pixels", SMALL_PIXELS, "--max-new-tokens", "8", "--batch-size", "2", "--concurrency", "2",
              "--max-retries", "2", "--cache", str(tmp_path / "c.sqlite")]
    server = Server(tiny_model_dir, port, tmp_path / "server.log")
    started = time.perf_counter()
    try:
        proc = subprocess.Popen(client, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 4):
            time.sleep(0.02)
        server.kill()
        _, err = proc.communicate(timeout=120)
    finally:
        server.stop()
    before = rows(out)
    assert proc.returncode == 3 and "rerun the same command to resume" in err, err
    assert 4 <= len(before) < n and all("error" not in r for r in before), "the kill must land mid-run, no error rows"
    server = Server(tiny_model_dir, port, tmp_path / "server.log")
    try:
        done = subprocess.run(client, check=False, capture_output=True, text=True, timeout=180)
        served = server.health()["requests"].get("chat", 0)
        # From scratch again: every answer comes from the cache, identical, with no request.
        fresh = tmp_path / "fresh.jsonl"
        again = subprocess.run([*client[:client.index("--out") + 1], str(fresh), *client[client.index("--out") + 2:]],
                               check=False, capture_output=True, text=True, timeout=180)
        served_again = server.health()["requests"].get("chat", 0)
    finally:
        server.stop()
    assert again.returncode == 0 and served_again == served, again.stderr
    assert sorted(rows(fresh), key=lambda r: r["id"]) == sorted(rows(out), key=lambda r: r["id"])
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    after = rows(out)
    ids = [r["id"] for r in after]
    assert sorted(ids) == sorted(f"k{i}" for i in range(n)) and len(ids) == n
    assert all("error" not in r for r in after) and after[: len(before)] == before
    print(f"\nfault: killed after {len(before)}/{n} rows; rerun judged {n - len(before)} "
          f"({served} requests to the restarted server); {elapsed:.1f} s in all")
    assert served <= n - len(before)
