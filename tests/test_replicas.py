"""Several servers behind one run (`--base-url` repeated): real HTTP servers on 127.0.0.1.

Scripted servers check the pool's choices (both used, the least loaded first, a failing one taken
out and its work done elsewhere, put back after a health check with backoff, every server down);
two real `dfj serve` processes on the tiny model check a whole `dfj judge` run with one of them
SIGKILLed mid-run."""

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image
from serving import NAME, SMALL_PIXELS, Server, free_port

from deepfakejudge.backends import (
    BackendUnavailable,
    ChatRequest,
    GenerationConfig,
    LoadOptions,
    RemoteOptions,
)
from deepfakejudge.backends.cache import VOLATILE
from deepfakejudge.backends.openai import OpenAIBackend
from deepfakejudge.cli import build_parser
from deepfakejudge.cli.options import base_urls

FAST = {"backoff_base": 0.05, "backoff_cap": 0.4, "timeout": 5.0}
CONFIG = GenerationConfig(max_new_tokens=8, top_logprobs=0)


class Replica:
    """A loopback OpenAI-compatible server: POST answers come from `respond(n)` (n: 0-based
    index of this server's POSTs), after `delay` seconds; GET /models from `healthy()`. Every
    call is recorded with its time; `peak` is the most POSTs it ever had in flight."""

    def __init__(self, respond=None, delay=0.0, healthy=lambda: True):
        self.posts, self.gets, self.lock = [], [], threading.Lock()
        self.in_flight = self.peak = 0
        respond = respond or (lambda n: 200)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                with outer.lock:
                    outer.gets.append(time.monotonic())
                if healthy():
                    self._send(200, {"data": [{"id": "m", "object": "model", "owned_by": "vllm"}]})
                else:
                    self._send(503, {"error": {"message": "starting"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    n = len(outer.posts)
                    outer.posts.append((time.monotonic(), body))
                    outer.in_flight += 1
                    outer.peak = max(outer.peak, outer.in_flight)
                try:
                    time.sleep(delay)
                    status = respond(n)
                    text = body["messages"][0]["content"][-1]["text"]
                    if status == 200:
                        self._send(200, {"choices": [{"index": 0, "finish_reason": "stop", "message": {
                            "role": "assistant", "content": f"<score>3</score> {text}"}}]})
                    else:
                        self._send(status, {"error": {"message": f"scripted {status}"}})
                finally:
                    with outer.lock:
                        outer.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answered(self):
        return len(self.posts)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def replicas():
    made = []

    def make(*args, **kw):
        made.append(Replica(*args, **kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


def pool_backend(urls, **remote):
    return OpenAIBackend(LoadOptions(model="m", remote=RemoteOptions(base_url=tuple(urls), **{**FAST, **remote})))


def requests(n):
    return [ChatRequest(text=f"item {i}") for i in range(n)]


def check_answers(results, n):
    """One answer per request, in order, each the answer to its own request."""
    assert len(results) == n
    for i, g in enumerate(results):
        assert g.text == f"<score>3</score> item {i}", g


def test_both_servers_get_work_and_the_counts_are_theirs(replicas):
    a, b = replicas(delay=0.02), replicas(delay=0.02)
    backend = pool_backend([a.url, b.url], concurrency=6)
    try:
        check_answers(backend.generate(requests(60), CONFIG), 60)
        info = backend.describe()
    finally:
        backend.close()
    counts = info["replicas"]
    assert info["base_url"] == [a.url, b.url]
    assert counts[a.url]["answered"] == a.answered() and counts[b.url]["answered"] == b.answered()
    assert a.answered() + b.answered() == 60
    # Least loaded first: with 6 in flight and equal servers, each holds about half (3; a server may
    # see one or two more for a moment, between sending an answer and counting it done).
    assert 20 <= a.answered() <= 40 and a.peak <= 5 and b.peak <= 5, (a.answered(), a.peak, b.peak)
    assert all(c["failed"] == 0 and c["taken_out"] == 0 and c["in"] for c in counts.values())


def test_a_slow_server_gets_less_work(replicas):
    slow, fast = replicas(delay=0.2), replicas(delay=0.01)
    backend = pool_backend([slow.url, fast.url], concurrency=4)
    try:
        check_answers(backend.generate(requests(40), CONFIG), 40)
    finally:
        backend.close()
    assert slow.answered() >= 1 and fast.answered() > 3 * slow.answered(), (slow.answered(), fast.answered())


def test_a_failing_server_is_taken_out_and_its_requests_answered_elsewhere(replicas):
    # Lists its model at start-up, then answers 503 to everything (health checks too).
    broken = replicas(respond=lambda n: 503, healthy=lambda: len(broken.gets) <= 1)
    good = replicas()
    backend = pool_backend([broken.url, good.url], concurrency=4, max_retries=2)
    try:
        results = backend.generate_each(requests(30), CONFIG)
        time.sleep(0.5)  # let the probes run with backoff
        counts = backend.describe()["replicas"]
    finally:
        backend.close()
    check_answers(results, 30)
    assert good.answered() == 30 and counts[good.url]["answered"] == 30
    c = counts[broken.url]
    assert c["failed"] == broken.answered() and 1 <= c["failed"] <= 4, c  # only those in flight when it failed
    assert c["answered"] == 0 and not c["in"] and c["taken_out"] == 1
    # Health checks with a delay that doubles (0.05, 0.1, 0.2, 0.4 ...): the gaps grow.
    gaps = [t1 - t0 for t0, t1 in zip(broken.gets, broken.gets[1:])]
    assert len(broken.gets) >= 3 and gaps[-1] > gaps[0] * 1.5, gaps


def test_a_server_that_recovers_is_put_back_after_a_health_check(replicas):
    state = {"up": False}
    flaky = replicas(respond=lambda n: 200 if state["up"] else 500,
                     healthy=lambda: state["up"] or len(flaky.gets) <= 1, delay=0.01)
    other = replicas(delay=0.01)
    backend = pool_backend([flaky.url, other.url], concurrency=4)
    try:
        check_answers(backend.generate(requests(20), CONFIG), 20)
        first = backend.describe()["replicas"][flaky.url]
        assert first["taken_out"] == 1 and not first["in"] and first["answered"] == 0 and first["failed"] >= 1
        state["up"] = True
        deadline = time.monotonic() + 5
        while not backend.describe()["replicas"][flaky.url]["in"] and time.monotonic() < deadline:
            time.sleep(0.02)
        posts_before = flaky.answered()
        check_answers(backend.generate(requests(20), CONFIG), 20)
        counts = backend.describe()["replicas"]
    finally:
        backend.close()
    assert counts[flaky.url]["in"] and counts[flaky.url]["answered"] == flaky.answered() - posts_before >= 5
    assert counts[flaky.url]["answered"] + counts[other.url]["answered"] == 40


def test_every_server_down_stops_the_run_with_a_message_naming_them(replicas):
    urls = [f"http://127.0.0.1:{free_port()}/v1", f"http://127.0.0.1:{free_port()}/v1"]
    # Start-up lists /models through the pool: with nothing listening it gives up like one server does.
    with pytest.raises(BackendUnavailable) as err:
        pool_backend(urls, max_retries=1)
    assert all(u in str(err.value) for u in urls) and "rerun the same command" in str(err.value)


def test_one_url_keeps_the_single_server_path(replicas):
    a = replicas()
    backend = OpenAIBackend(LoadOptions(model="m", remote=RemoteOptions(base_url=a.url, **FAST)))
    try:
        info = backend.describe()
    finally:
        backend.close()
    assert info["base_url"] == a.url and "replicas" not in info and backend._pool is None
    assert "replicas" in VOLATILE  # per-server counts never enter a request cache key


def test_base_url_options():
    parser = build_parser()
    common = ["judge", "pointwise", "--model", "m", "--data", "d.jsonl", "--out", "o.jsonl"]
    one = parser.parse_args([*common, "--base-url", "http://a/v1"])
    two = parser.parse_args([*common, "--base-url", "http://a/v1", "--base-url", "http://b/v1"])
    none = parser.parse_args(common)
    assert base_urls(one.base_url) == "http://a/v1"
    assert base_urls(two.base_url) == ("http://a/v1", "http://b/v1")
    assert base_urls(none.base_url) is None
    boot = parser.parse_args(["bootstrap", "--generator", "g", "--evaluator", "e", "--data", "d", "--out", "o",
                              "--generator-base-url", "http://a/v1", "--generator-base-url", "http://b/v1"])
    assert boot.generator_base_url == ["http://a/v1", "http://b/v1"]
    reason = parser.parse_args(["reason", "score", "--pred", "p.jsonl", "--gold", "g.jsonl", "--judge", "m",
                                "--judge-base-url", "http://a/v1", "--judge-base-url", "http://b/v1"])
    assert base_urls(reason.judge_base_url) == ("http://a/v1", "http://b/v1")
    with pytest.raises(ValueError, match="the same server is given twice"):
        OpenAIBackend(LoadOptions(model="m", remote=RemoteOptions(base_url=("http://a/v1", "http://a/v1/"))))


def test_reproduce_forwards_each_base_url():
    from deepfakejudge.cli.reproduce import _forwarded

    args = build_parser().parse_args(["reproduce", "--out", "o", "--base-url", "http://a/v1",
                                      "--base-url", "http://b/v1", "--backend", "openai"])
    argv = _forwarded(args)
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--base-url"] == ["http://a/v1", "http://b/v1"]


def test_two_dfj_serve_one_killed_mid_run_every_id_once(tiny_model_dir, tmp_path):
    """`dfj judge` over two real servers: both work; one SIGKILLed mid-run moves its work to the
    other; every id appears once, no error rows; the per-server counts add up."""
    n = 24
    Image.new("RGB", (40, 40), (1, 2, 3)).save(tmp_path / "a.png")
    (tmp_path / "d.jsonl").write_text("".join(
        json.dumps({"id": f"r{i}", "image": "a.png", "label": "fake", "response": f"It is fake #{i}"}) + "\n"
        for i in range(n)))
    servers = [Server(tiny_model_dir, free_port(), tmp_path / f"server{k}.log") for k in range(2)]
    out = tmp_path / "r.jsonl"
    client = [sys.executable, "-m", "deepfakejudge", "judge", "pointwise", "--model", NAME, "--backend", "openai",
              *[x for s in servers for x in ("--base-url", s.url + "/v1")], "--data", str(tmp_path / "d.jsonl"),
              "--out", str(out), "--max-pixels", SMALL_PIXELS, "--max-new-tokens", "8", "--batch-size", "4",
              "--concurrency", "4", "--max-retries", "3", "--no-cache", "--json"]
    try:
        proc = subprocess.Popen(client, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 4):
            time.sleep(0.02)
        servers[0].kill()
        stdout, err = proc.communicate(timeout=180)
        survivor_chats = servers[1].health()["requests"].get("chat", 0)
    finally:
        for s in servers:
            s.stop()
    assert proc.returncode == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(f"r{i}" for i in range(n)) and len(rows) == n
    assert all("error" not in r and "raw" in r for r in rows), rows[0]  # a random model: scores may not parse
    summary = json.loads(stdout)
    counts = summary["backend"]["replicas"]
    killed, survivor = (counts[s.url + "/v1"] for s in servers)
    assert killed["answered"] >= 1 and survivor["answered"] >= 1, counts  # both had work
    assert killed["taken_out"] >= 1 and not killed["in"] and killed["failed"] >= 1, killed
    assert killed["answered"] + survivor["answered"] == n  # one completion per row, no re-asks, no cache
    assert survivor["answered"] == survivor_chats  # the survivor counted the same requests
    print(f"\nreplicas: killed server answered {killed['answered']}, {killed['failed']} moved; "
          f"survivor answered {survivor['answered']} of {n}")


def test_bootstrap_spreads_each_role_over_its_servers(replicas, tmp_path, capsys):
    """`dfj bootstrap` with --generator-base-url and --evaluator-base-url each given twice: every
    server gets calls, and each role's per-server counts add up to what its servers received."""
    from deepfakejudge.cli import main

    examples = Path(__file__).resolve().parents[1] / "examples" / "detect.jsonl"
    gen, eva = [replicas(delay=0.01) for _ in range(2)], [replicas(delay=0.01) for _ in range(2)]
    argv = ["bootstrap", "--generator", "m", "--generator-backend", "openai",
            *[x for r in gen for x in ("--generator-base-url", r.url)],
            "--evaluator", "m", "--evaluator-backend", "openai", *[x for r in eva for x in ("--evaluator-base-url", r.url)],
            "--data", str(examples), "--out", str(tmp_path / "run"), "--limit", "2", "--rounds", "1",
            "--paraphrases", "1", "--no-cache", "--concurrency", "4", "--max-pixels", SMALL_PIXELS,
            "--allow-errors", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    for role, servers in (("generator", gen), ("evaluator", eva)):
        counts = summary["backends"][role]["replicas"]
        assert all(r.answered() >= 1 for r in servers), [r.answered() for r in servers]
        assert [counts[r.url]["answered"] for r in servers] == [r.answered() for r in servers]
    assert sum(r.answered() for r in gen + eva) == summary["this_run"]["calls_total"]


def test_the_docs_commands_with_several_servers_parse():
    """The `dfj` commands of the docs' "Several servers" section parse, each with two servers."""
    import re
    import shlex

    text = (Path(__file__).resolve().parents[1] / "docs" / "remote-and-serve.md").read_text(encoding="utf-8")
    section = text.split("### Several servers behind one run", 1)[1].split("\n### ", 1)[0]
    commands = [" ".join(line.split()) for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)
                for line in block.replace("\\\n", " ").splitlines() if line.startswith(("dfj judge", "dfj bootstrap"))]
    assert len(commands) == 2, commands
    parser = build_parser()
    judge = parser.parse_args(shlex.split(commands[0])[1:])
    assert judge.backend == "openai" and len(base_urls(judge.base_url)) == 2
    boot = parser.parse_args(shlex.split(commands[1])[1:])
    assert len(base_urls(boot.generator_base_url)) == len(base_urls(boot.evaluator_base_url)) == 2


def test_the_replicas_benchmark_runs(tmp_path):
    """benchmarks/replicas.py --quick end to end: every path answers every request once and the
    per-server counts add up (timings are not asserted)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "replicas.py"
    proc = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = tmp_path.glob("replicas_quick_*.json")
    result = json.loads(path.read_text())
    paths = [r["path"] for r in result["rows"]]
    assert paths == ["one", "two", "two, one killed", "client cost, one URL", "client cost, pool of two"]
    for row in result["rows"]:
        assert row["answered"] == row["requests"] and row["requests_per_s"] > 0
        if row["per_server"] is not None:
            assert sum(c["answered"] for c in row["per_server"].values()) == row["requests"]
    killed = list(result["rows"][2]["per_server"].values())[1]
    assert killed["taken_out"] == 1 and not killed["in"]
