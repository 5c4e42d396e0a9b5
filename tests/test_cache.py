"""The request cache: what its key holds, what a hit returns, failures and partial results, and
many processes reading and writing one SQLite file at once."""

import json
import multiprocessing
import sqlite3

import pytest
from PIL import Image

from deepfakejudge import PointwiseJudge
from deepfakejudge.backends import (
    Backend,
    BackendError,
    BackendUnavailable,
    Capabilities,
    ChatRequest,
    Generation,
    GenerationConfig,
    TokenStep,
)
from deepfakejudge.backends.cache import CachedBackend, RequestCache
from deepfakejudge.records import Sample


class Counting(Backend):
    """Answers from the request text; counts requests; fails requests whose text says so."""

    name = "counting"
    capabilities = Capabilities(logprobs=True, choice_probs=True)

    def __init__(self, model="m"):
        self.model, self.generated, self.scored = model, 0, 0

    def generate_each(self, requests, config):
        self.generated += len(requests)
        out = []
        for r in requests:
            if "FAIL" in r.text:
                out.append(BackendError("simulated"))
                continue
            text = f"{r.text}|{r.prefix}|{config.temperature}|{config.seed}"
            out.append(Generation(text, (TokenStep(0, text, -0.5, ((text, -0.5), ("é", float("-inf")))),), "stop"))
        return out

    def generate(self, requests, config):
        return self.generate_each(requests, config)

    def choice_probs(self, requests, choices):
        self.scored += len(requests)
        return [{c: 1 / (k + 2) for k, c in enumerate(choices)} for _ in requests]

    def describe(self):
        return {"backend": self.name, "model": self.model, "concurrency": 3}


def image(color):
    return Image.new("RGB", (8, 8), color)


def test_second_call_is_served_from_the_cache_identically(tmp_path):
    inner = Counting()
    backend = CachedBackend(inner, RequestCache(tmp_path / "c.sqlite"))
    config = GenerationConfig(max_new_tokens=4)
    requests = [ChatRequest("a", image(1), image_key="k1"), ChatRequest("b", image(2)), ChatRequest("a", prefix="<s>")]
    first = backend.generate(requests, config)
    assert inner.generated == 3
    again = CachedBackend(inner, RequestCache(tmp_path / "c.sqlite")).generate(requests, config)
    assert inner.generated == 3 and again == first  # zero model calls, identical values (-inf kept)
    probs = backend.choice_probs(requests, ("A", "B"))
    assert backend.choice_probs(requests, ("A", "B")) == probs and inner.scored == 3
    assert backend.cache.hits == 3 and backend.cache.misses == 6  # generate hits went to the second instance


@pytest.mark.parametrize(
    "change",
    [
        lambda r, c: (ChatRequest(r.text + " ", r.image, r.prefix, r.image_key), c),  # text (and template)
        lambda r, c: (ChatRequest(r.text, r.image, "<answer>", r.image_key), c),  # prefix
        lambda r, c: (ChatRequest(r.text, r.image, r.prefix, "other-bytes"), c),  # image content
        lambda r, c: (r, GenerationConfig(max_new_tokens=5)),  # sampling
        lambda r, c: (r, GenerationConfig(max_new_tokens=4, temperature=0.7, seed=1)),
        lambda r, c: (r, GenerationConfig(max_new_tokens=4, top_logprobs=3)),
    ],
)
def test_anything_that_changes_the_answer_changes_the_key(tmp_path, change):
    inner = Counting()
    backend = CachedBackend(inner, RequestCache(tmp_path / "c.sqlite"))
    base, config = ChatRequest("t", image(3), "", "k"), GenerationConfig(max_new_tokens=4)
    backend.generate([base], config)
    request, changed = change(base, config)
    backend.generate([request], changed)
    assert inner.generated == 2


def test_model_and_pixels_are_part_of_the_key_but_not_the_concurrency(tmp_path):
    cache = RequestCache(tmp_path / "c.sqlite")
    CachedBackend(Counting("m"), cache).generate([ChatRequest("t", image(4))], GenerationConfig())
    other_model = Counting("m2")
    CachedBackend(other_model, cache).generate([ChatRequest("t", image(4))], GenerationConfig())
    other_pixels = Counting("m")
    CachedBackend(other_pixels, cache).generate([ChatRequest("t", image(5))], GenerationConfig())
    same = Counting("m")
    same.describe = lambda: {"backend": "counting", "model": "m", "concurrency": 64}
    CachedBackend(same, cache).generate([ChatRequest("t", image(4))], GenerationConfig())
    assert (other_model.generated, other_pixels.generated, same.generated) == (1, 1, 0)


def test_failures_are_not_cached_and_partial_results_are(tmp_path):
    inner = Counting()
    backend = CachedBackend(inner, RequestCache(tmp_path / "c.sqlite"))
    out = backend.generate_each([ChatRequest("ok"), ChatRequest("FAIL")], GenerationConfig())
    assert isinstance(out[1], BackendError) and isinstance(out[0], Generation)
    backend.generate_each([ChatRequest("ok"), ChatRequest("FAIL")], GenerationConfig())
    assert inner.generated == 3  # "ok" once, "FAIL" twice

    class Down(Counting):
        def generate_each(self, requests, config):
            got = super().generate_each(requests, config)
            raise BackendUnavailable("server went away", partial=[got[0], None])

    down = Down()
    cached = CachedBackend(down, RequestCache(tmp_path / "d.sqlite"))
    with pytest.raises(BackendUnavailable):
        cached.generate_each([ChatRequest("first"), ChatRequest("second")], GenerationConfig())
    cached.generate_each([ChatRequest("first")], GenerationConfig())
    assert down.generated == 2, "what arrived before the server went away is kept"


def test_judge_rerun_costs_no_model_call(tmp_path):
    Image.new("RGB", (16, 16), (9, 9, 9)).save(tmp_path / "x.png")
    samples = [Sample(id=f"s{i}", image=tmp_path / "x.png", label="fake", response=f"r{i}") for i in range(4)]
    inner = Counting()
    first = PointwiseJudge(CachedBackend(inner, RequestCache(tmp_path / "c.sqlite"))).score(samples)
    second = PointwiseJudge(CachedBackend(inner, RequestCache(tmp_path / "c.sqlite"))).score(samples)
    assert inner.generated == 4 and first == second


def _writer(path, worker, n):
    cache = RequestCache(path, busy_timeout=60)
    for i in range(n):
        cache.put_many([(f"{worker}-{i}", "generate", {"w": worker, "i": i})])
        assert cache.get_many([f"{worker}-{i}"]) == {f"{worker}-{i}": {"w": worker, "i": i}}
        cache.get_many([f"{(worker + 1) % 4}-{i}"])  # read what others are writing
    cache.close()


def test_concurrent_processes_share_one_file(tmp_path):
    path = tmp_path / "shared.sqlite"
    RequestCache(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 60)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    cache = RequestCache(path)
    assert len(cache) == 240
    assert cache.get_many(["3-59"]) == {"3-59": {"w": 3, "i": 59}}
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_file_that_is_not_a_cache_is_refused(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ValueError, match="--cache .*bad.sqlite.*--no-cache"):
        RequestCache(bad)


def test_cli_cache_with_the_local_backend(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from deepfakejudge.cli import main

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")
    (tmp_path / "d.jsonl").write_text("".join(
        json.dumps({"id": f"i{i}", "image": "a.png", "label": "fake", "response": f"resp {i}"}) + "\n" for i in range(3)))
    argv = ["judge", "pointwise", "--model", str(tiny_model_dir), "--data", str(tmp_path / "d.jsonl"),
            "--mode", "score-only", "--device", "cpu", "--max-pixels", str(16 * 28 * 28), "--cache", str(tmp_path / "c.sqlite")]
    assert main(argv + ["--out", str(tmp_path / "one.jsonl")]) == 0
    assert len(RequestCache(tmp_path / "c.sqlite")) == 3
    from deepfakejudge.backends import hf

    calls = []
    original = hf.HFBackend.choice_probs
    monkeypatch.setattr(hf.HFBackend, "choice_probs", lambda self, *a: calls.append(1) or original(self, *a))
    assert main(argv + ["--out", str(tmp_path / "two.jsonl")]) == 0
    assert calls == []
    rows = lambda name: [json.loads(x) for x in (tmp_path / name).read_text().splitlines()]
    assert rows("one.jsonl") == rows("two.jsonl")
    summary = json.loads((tmp_path / "two.summary.json").read_text())
    assert summary["backend"]["cache"] == str(tmp_path / "c.sqlite")


def test_a_model_changed_in_place_is_not_answered_from_the_cache(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """The cache key holds a fingerprint of the checkpoint folder's files, not only its path:
    weights rewritten in the same folder (a retrained judge) are asked again."""
    import os
    import shutil

    from deepfakejudge.backends import hf
    from deepfakejudge.cli import main

    model = tmp_path / "judge"
    shutil.copytree(tiny_model_dir, model)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")
    (tmp_path / "d.jsonl").write_text("".join(
        json.dumps({"id": f"i{i}", "image": "a.png", "label": "fake", "response": f"resp {i}"}) + "\n" for i in range(2)))
    calls = []
    original = hf.HFBackend.choice_probs
    monkeypatch.setattr(hf.HFBackend, "choice_probs", lambda self, *a: calls.append(len(a[0])) or original(self, *a))
    argv = ["judge", "pointwise", "--model", str(model), "--data", str(tmp_path / "d.jsonl"), "--mode", "score-only",
            "--device", "cpu", "--max-pixels", str(16 * 28 * 28), "--cache", str(tmp_path / "c.sqlite"), "--overwrite",
            "--out", str(tmp_path / "r.jsonl")]
    assert main(argv) == 0 and calls == [2]
    assert main(argv) == 0 and calls == [2]  # same files: from the cache
    weights = model / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten a second later
    assert main(argv) == 0 and calls == [2, 2]
    assert len(RequestCache(tmp_path / "c.sqlite")) == 4
    assert hf.folder_fingerprint(str(model)) != hf.folder_fingerprint(str(tiny_model_dir))
    assert hf.folder_fingerprint("Qwen/Qwen2.5-VL-3B-Instruct") is None and hf.folder_fingerprint(None) is None


class Stopping(Counting):
    """Cuts its output at the answer tag when asked, as the local engine does."""

    honours_stop_at_answer = True

    def generate_each(self, requests, config):
        self.generated += len(requests)
        text = "<score>3</score>" + ("" if config.stop_at_answer else " and more")
        return [Generation(text, (), "stop") for _ in requests]


@pytest.mark.parametrize("honours", [True, False])
def test_stop_at_answer_is_in_the_key_only_where_the_engine_honours_it(tmp_path, honours):
    inner = Stopping() if honours else Counting()
    backend = CachedBackend(inner, RequestCache(tmp_path / "c.sqlite"))
    request = ChatRequest(image=image("red"), text="judge this")
    cut = backend.generate([request], GenerationConfig(stop_at_answer="score"))[0].text
    whole = backend.generate([request], GenerationConfig(stop_at_answer=None))[0].text
    if honours:
        # A run without the stop must not be served the output cut at the tag.
        assert (cut, whole, inner.generated) == ("<score>3</score>", "<score>3</score> and more", 2)
    else:
        # An engine that ignores the stop answers the same either way: one call, one cache entry.
        assert cut == whole and inner.generated == 1


def test_a_remote_model_is_cached_by_what_it_serves_not_where(tmp_path, capsys):
    """The servers' addresses are not part of the key: a run against server A fills the cache, the
    same run against [B, A] (a pool, another order) or against C (the model moved to another port)
    sends no request at all; another model name, or other weights under the same name, is asked."""
    from serving import RecordingChatServer

    from deepfakejudge.cli import main

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")
    Image.new("RGB", (30, 40), (10, 200, 10)).save(tmp_path / "b.png")
    (tmp_path / "d.jsonl").write_text("".join(
        json.dumps({"id": f"i{i}", "image": "ab"[i % 2] + ".png", "label": "fake", "response": f"resp {i}"}) + "\n"
        for i in range(3)))
    answer = "<reasoning>warped text</reasoning>\n<score>4</score>"
    root = {"root": "/models/judge-v1"}
    a, b, c = (RecordingChatServer(answer, model_id="judge", listed=root) for _ in range(3))
    renamed = RecordingChatServer(answer, model_id="judge-2", listed=root)
    retrained = RecordingChatServer(answer, model_id="judge", listed={"root": "/models/judge-v2"})
    servers = [a, b, c, renamed, retrained]

    def run(name, *urls, model="judge"):
        argv = ["judge", "pointwise", "--backend", "openai", "--model", model, "--data", str(tmp_path / "d.jsonl"),
                "--mode", "generate", "--cache", str(tmp_path / "c.sqlite"), "--out", str(tmp_path / f"{name}.jsonl")]
        for url in urls:
            argv += ["--base-url", url]
        assert main(argv) == 0, capsys.readouterr().err
        rows = [json.loads(x) for x in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        return rows, json.loads((tmp_path / f"{name}.summary.json").read_text())["backend"]

    try:
        first, _ = run("a", a.url)
        assert len(a.bodies) == 3 and [r["score"] for r in first] == [4, 4, 4]
        pool, described = run("pool", b.url, a.url)
        moved, _ = run("moved", c.url)
        assert (len(a.bodies), len(b.bodies), len(c.bodies)) == (3, 0, 0)  # no request reached a server
        assert pool == first and moved == first
        # The summary still says where the run was sent, and which weights the servers listed.
        assert described["base_url"] == [b.url, a.url] and described["weights"] == root
        run("renamed", renamed.url, model="judge-2")
        run("retrained", retrained.url)
        assert (len(renamed.bodies), len(retrained.bodies)) == (3, 3)
    finally:
        for server in servers:
            server.close()
