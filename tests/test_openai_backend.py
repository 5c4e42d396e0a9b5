"""The OpenAI-compatible backend against scripted HTTP servers on 127.0.0.1: retries and
Retry-After, failure classes, log-probs to TokenSteps, choice probabilities with healing, images
resized by Qwen's rule, and re-asks of unparsable outputs."""

import base64
import io
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfakejudge import PairwiseJudge, PointwiseJudge
from deepfakejudge.backends import (
    BackendError,
    BackendUnavailable,
    ChatRequest,
    GenerationConfig,
    LoadOptions,
    PixelBudget,
    RemoteOptions,
)
from deepfakejudge.backends.openai import (
    OpenAIBackend,
    backoff_delay,
    encode_image,
    heal_split,
    pieces_from_bytes,
    smart_resize,
    steps_from_logprobs,
)
from deepfakejudge.records import RowError, Sample

FAST = {"backoff_base": 0.01, "backoff_cap": 0.05, "timeout": 5.0}


class Scripted:
    """A loopback HTTP server whose /chat/completions answers come from `respond(body, n)`
    (n: 0-based index of the call); every call is recorded with its time."""

    def __init__(self, respond, owned_by="vllm", models_status=200):
        self.calls, self.lock = [], threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body, headers=()):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if models_status != 200:
                    return self._send(models_status, {"error": {"message": "nope"}})
                self._send(200, {"data": [{"id": "m", "object": "model", "owned_by": owned_by}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    n = len(outer.calls)
                    outer.calls.append((time.monotonic(), body, self.headers.get("Authorization")))
                status, reply, headers = respond(body, n)
                self._send(status, reply, headers)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    servers = []

    def make(respond, **kw):
        servers.append(Scripted(respond, **kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def completion(text, logprobs=None):
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": logprobs, "finish_reason": "stop"}]}


def entry(token, p, top=()):
    return {"token": token, "logprob": math.log(p), "bytes": list(token.encode()),
            "top_logprobs": [{"token": t, "logprob": math.log(q)} for t, q in top]}


def backend(url, budget=None, **remote):
    return OpenAIBackend(LoadOptions(model="m", budget=budget or PixelBudget(),
                                     remote=RemoteOptions(base_url=url, **{**FAST, **remote})))


def req(text="judge this", prefix="", image=None):
    return ChatRequest(text=text, image=image, prefix=prefix)


def test_retries_429_then_500_then_succeeds_honouring_retry_after(scripted):
    def respond(body, n):
        if n == 0:
            return 429, {"error": {"message": "slow down"}}, [("Retry-After", "1")]
        if n == 1:
            return 500, {"error": {"message": "boom"}}, []
        return 200, completion("<score>4</score>"), []

    server = scripted(respond)
    b = backend(server.url, max_retries=3)
    try:
        (g,) = b.generate([req()], GenerationConfig(max_new_tokens=8, top_logprobs=0))
    finally:
        b.close()
    assert g.text == "<score>4</score>" and len(server.calls) == 3
    t = [c[0] for c in server.calls]
    assert t[1] - t[0] >= 1.0, "Retry-After: 1 must be waited for"
    assert t[2] - t[1] < 0.5, "a 500 without Retry-After backs off briefly"


def test_failure_classes(scripted, monkeypatch):
    # Persistent 5xx: this request's BackendError (one error row), after max_retries + 1 tries.
    server = scripted(lambda body, n: (503, {"error": {"message": "overloaded"}}, []))
    b = backend(server.url, max_retries=2)
    (r,) = b.generate_each([req()], GenerationConfig(max_new_tokens=4))
    assert isinstance(r, BackendError) and "503" in str(r) and len(server.calls) == 3
    b.close()
    # 400: not retried.
    server = scripted(lambda body, n: (400, {"error": {"message": "image too large"}}, []))
    b = backend(server.url, max_retries=4)
    (r,) = b.generate_each([req()], GenerationConfig(max_new_tokens=4))
    assert isinstance(r, BackendError) and "image too large" in str(r) and len(server.calls) == 1
    b.close()
    # A 429 that never lifts stops the run instead of writing error rows.
    server = scripted(lambda body, n: (429, {"error": {"message": "quota"}}, []))
    b = backend(server.url, max_retries=1)
    with pytest.raises(BackendUnavailable, match="rerun"):
        b.generate_each([req()], GenerationConfig(max_new_tokens=4))
    b.close()
    # The key: a ValueError naming --api-key-env; the key travels only in the header.
    monkeypatch.setenv("DFJ_TEST_KEY", "sk-secret-123")
    server = scripted(lambda body, n: (401, {"error": {"message": "bad key"}}, []))
    b = backend(server.url, api_key_env="DFJ_TEST_KEY")
    with pytest.raises(ValueError, match="--api-key-env.*DFJ_TEST_KEY") as err:
        b.generate_each([req()], GenerationConfig(max_new_tokens=4))
    assert "sk-secret-123" not in str(err.value) and "sk-secret-123" not in json.dumps(b.describe())
    assert server.calls[0][2] == "Bearer sk-secret-123"
    b.close()


def test_connection_refused_is_unavailable():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(BackendUnavailable, match="unreachable"):
        backend(f"http://127.0.0.1:{port}/v1", max_retries=1)


def test_partial_batch_failure_costs_one_row(scripted, tmp_path):
    def respond(body, n):
        text = body["messages"][0]["content"][-1]["text"]
        if "POISON" in text:
            return 400, {"error": {"message": "refused"}}, []
        return 200, completion("<reasoning>ok</reasoning>\n<score>3</score>"), []

    server = scripted(respond)
    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    samples = [Sample(id=f"s{i}", image=tmp_path / "x.png", label="fake", where=f"d:{i}",
                      response="POISON" if i == 2 else "fine") for i in range(5)]
    b = backend(server.url)
    try:
        out = PointwiseJudge(b).score(samples, batch_size=5)
    finally:
        b.close()
    assert [type(v).__name__ for v in out] == ["PointwiseVerdict"] * 2 + ["RowError"] + ["PointwiseVerdict"] * 2
    assert out[2].field == "<model>" and "refused" in out[2].message
    assert [v.score for i, v in enumerate(out) if i != 2] == [3, 3, 3, 3]
    assert len(server.calls) == 5, "the four good requests are not asked again"


def test_generate_reads_logprobs_into_steps(scripted):
    text = "<score>4</score>"
    entries = [entry("<score>", 0.9), entry("4", 0.6, [("4", 0.6), ("3", 0.3), ("x", 0.05)]), entry("</score>", 0.99)]

    server = scripted(lambda body, n: (200, completion(text, {"content": entries}), []))
    b = backend(server.url)
    try:
        (g,) = b.generate([req()], GenerationConfig(max_new_tokens=8, top_logprobs=5))
    finally:
        b.close()
    assert [s.offset for s in g.steps] == [0, 7, 8] and g.steps[1].top[1] == ("3", pytest.approx(math.log(0.3)))
    assert server.calls[0][1]["logprobs"] is True and server.calls[0][1]["top_logprobs"] == 5


def test_pointwise_generate_over_http_gives_probs(scripted, tmp_path):
    text = "<reasoning>r</reasoning>\n<score>4</score>"
    entries = [entry("<reasoning>r</reasoning>\n<score>", 0.9), entry("4", 0.6, [("4", 0.6), ("3", 0.2), ("5", 0.2)]),
               entry("</score>", 0.99)]
    server = scripted(lambda body, n: (200, completion(text, {"content": entries}), []))
    Image.new("RGB", (30, 30)).save(tmp_path / "x.png")
    b = backend(server.url)
    try:
        (v,) = PointwiseJudge(b).score([Sample(id="a", image=tmp_path / "x.png", label="real", response="r")])
    finally:
        b.close()
    assert v.score == 4 and v.probs == pytest.approx((0, 0, 0.2, 0.6, 0.2)) and v.choice_mass == pytest.approx(1.0)


def test_without_logprobs_scores_are_parsed_and_probs_null(scripted, tmp_path, caplog):
    server = scripted(lambda body, n: (200, completion("<reasoning>r</reasoning>\n<score>2</score>"), []),
                      owned_by="openai")
    Image.new("RGB", (30, 30)).save(tmp_path / "x.png")
    b = backend(server.url)
    try:
        assert not b.capabilities.choice_probs  # OpenAI cannot continue an assistant message
        (v,) = PointwiseJudge(b).score([Sample(id="a", image=tmp_path / "x.png", label="real", response="r")])
        with pytest.raises(ValueError, match="--mode score-only.*--mode generate"):
            PointwiseJudge(b, mode="score-only").score([Sample(id="b", image=tmp_path / "x.png", label="real", response="r")])
    finally:
        b.close()
    assert v.score == 2 and v.probs is None and v.expected_score is None
    notices = [r.getMessage() for r in caplog.records]
    assert sum("continue a prefilled assistant" in m for m in notices) == 1
    assert sum("no usable logprobs" in m for m in notices) == 1


def test_choice_probs_heal_the_answer_tag_and_send_the_prefix_to_continue(scripted):
    def respond(body, n):
        prefix = body["messages"][-1]["content"]
        if prefix == "<answer":  # the server's tokenizer glues ">A": ask for those tokens
            return 200, completion(">A", {"content": [entry(">A", 0.5, [(">A", 0.5), (">B", 0.25), (">", 0.1)])]}), []
        return 200, completion("4", {"content": [entry("4", 0.4, [("4", 0.4), ("2", 0.1), ("x", 0.3)])]}), []

    server = scripted(respond, owned_by="vllm")
    b = backend(server.url, top_logprobs=7)
    try:
        assert b.capabilities.choice_probs
        (ab,) = b.choice_probs([req(prefix="<answer>")], ("A", "B"))
        (digits,) = b.choice_probs([req(prefix="<score>")], tuple("12345"))
    finally:
        b.close()
    assert ab == pytest.approx({"A": 0.5, "B": 0.25})
    assert digits == pytest.approx({"1": 0, "2": 0.1, "3": 0, "4": 0.4, "5": 0})
    first, second = server.calls[0][1], server.calls[1][1]
    assert first["continue_final_message"] is True and first["add_generation_prompt"] is False
    assert first["messages"][-1] == {"role": "assistant", "content": "<answer"}
    assert second["messages"][-1]["content"] == "<score>" and second["max_tokens"] == 1
    assert second["top_logprobs"] == 7 and second["temperature"] == 0


def test_choice_probs_when_the_tokenizer_keeps_punctuation_apart(scripted):
    def respond(body, n):
        if body["messages"][-1]["content"] == "<answer":
            return 200, completion(">", {"content": [entry(">", 0.8, [(">", 0.8), ("s", 0.1)])]}), []
        return 200, completion("A", {"content": [entry("A", 0.5, [("A", 0.5), ("B", 0.5)])]}), []

    server = scripted(respond, owned_by="sglang")
    b = backend(server.url)
    try:
        (ab,) = b.choice_probs([req(prefix="<answer>")], ("A", "B"))
    finally:
        b.close()
    assert ab == pytest.approx({"A": 0.4, "B": 0.4})  # P(">") * P(choice | "<answer>")
    assert "add_generation_prompt" not in server.calls[1][1]  # SGLang has no such field


def test_logprobs_refused_degrades_once(scripted, caplog):
    def respond(body, n):
        if "logprobs" in body:
            return 400, {"error": {"message": "logprobs is not supported for this model"}}, []
        return 200, completion("<score>5</score>"), []

    server = scripted(respond, owned_by="google")
    b = backend(server.url)
    try:
        gens = b.generate([req(), req("other")], GenerationConfig(max_new_tokens=8))
        gens += b.generate([req("third")], GenerationConfig(max_new_tokens=8))
    finally:
        b.close()
    assert [g.text for g in gens] == ["<score>5</score>"] * 3 and all(not g.steps for g in gens)
    assert "logprobs" not in server.calls[-1][1]  # later requests no longer ask
    assert sum("refuses logprobs" in r.getMessage() for r in caplog.records) == 1


def test_usage_is_read_into_the_generation(scripted):
    def respond(body, n):
        reply = completion(f"answer {n}")
        if n == 0:
            reply["usage"] = {"prompt_tokens": 321, "completion_tokens": 7, "total_tokens": 328}
        elif n == 1:
            reply["usage"] = {"prompt_tokens": "many", "completion_tokens": -1}  # not counts: ignored
        return 200, reply, []

    server = scripted(respond)
    b = backend(server.url, concurrency=1)
    try:
        gens = b.generate([req("a"), req("b"), req("c")], GenerationConfig(max_new_tokens=8, top_logprobs=0))
    finally:
        b.close()
    assert [(g.prompt_tokens, g.completion_tokens) for g in gens] == [(321, 7), (None, None), (None, None)]


def test_choice_probs_refused_logprobs_are_an_error_for_every_request(scripted):
    # A server whose limit is 5 alternatives, asked for 50: no request of any batch may come back as
    # an answer without log-probs (it would read as "no probability on any choice").
    def respond(body, n):
        if body.get("top_logprobs", 0) > 5:
            return 400, {"error": {"message": "top_logprobs must be between 0 and 5, got 50"}}, []
        logprobs = {"content": [entry("4", 0.5, [("4", 0.5), ("3", 0.25)])]} if body.get("logprobs") else None
        return 200, completion("4", logprobs), []

    server = scripted(respond)
    b = backend(server.url, top_logprobs=50)
    try:
        first = b.choice_probs_each([req(f"t{i}", prefix="<score>") for i in range(4)], list("12345"))
        sent = len(server.calls)
        later = b.choice_probs_each([req(f"u{i}", prefix="<score>") for i in range(3)], list("12345"))
        # Text generation on the same backend still degrades to text without log-probs.
        (g,) = b.generate([req("g")], GenerationConfig(max_new_tokens=4, top_logprobs=50))
    finally:
        b.close()
    assert all(isinstance(r, BackendError) for r in first + later) and len(first + later) == 7
    message = str(first[0])
    assert message.startswith("--top-logprobs 50: the server at ") and "between 0 and 5" in message
    assert "at most the server's limit" in message and all(str(r) == message for r in first + later)
    assert sent == 4 and len(server.calls) == 4 + 2  # the later batch is answered without a call
    assert g.text == "4" and not g.steps


def test_detect_score_only_over_the_servers_logprobs_limit_gives_error_rows_to_retry(tiny_model_dir, tmp_path, capsys):
    # `dfj detect run --mode score-only --top-logprobs 500` against `dfj serve --max-logprobs 20`: every
    # row, in every batch, is a model-call error row; --retry-errors with a --top-logprobs the server takes
    # answers them all.
    from serving import NAME, SMALL_PIXELS, Server, free_port

    from deepfakejudge.cli import main

    data = Path(__file__).resolve().parents[1] / "examples" / "detect.jsonl"
    server = Server(tiny_model_dir, free_port(), tmp_path / "server.log", "--max-logprobs", "20")
    try:
        out = tmp_path / "detect.jsonl"
        argv = ["detect", "run", "--model", NAME, "--backend", "openai", "--base-url", server.url + "/v1",
                "--mode", "score-only", "--data", str(data), "--out", str(out), "--batch-size", "8",
                "--max-pixels", SMALL_PIXELS, "--no-cache"]
        assert main([*argv, "--top-logprobs", "500"]) == 1
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == 14 and all(r["field"] == "<model>" for r in rows)
        assert all("--top-logprobs 500" in r["error"] and "between 0 and 20 (the server's --max-logprobs)" in r["error"]
                   for r in rows)
        assert server.health()["requests"].get("chat", 0) == 0  # counted only once a request is accepted
        capsys.readouterr()
        assert main([*argv, "--top-logprobs", "20", "--retry-errors", "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert summary["errors"] == 0 and sorted(r["id"] for r in rows) == sorted(json.loads(x)["id"] for x in
                                                                                  data.read_text().splitlines())
        assert all("error" not in r and r["choice_mass"] is not None for r in rows)
        assert server.health()["requests"]["chat"] == 14
    finally:
        server.stop()


def test_images_are_sent_resized_by_qwens_rule(scripted, tiny_model_dir):
    from transformers import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as reference

    budget = PixelBudget(3136, 64 * 28 * 28)
    for h, w in [(20, 30), (84, 84), (120, 200), (700, 900), (1000, 37), (29, 5000), (3000, 3000)]:
        assert smart_resize(h, w, budget) == reference(h, w, 28, budget.min_pixels, budget.max_pixels)
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (150, 230, 3), dtype=np.uint8))
    url = encode_image(image, budget)
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == (smart_resize(150, 230, budget)[1], smart_resize(150, 230, budget)[0])
    # The server's processor sees the pixels it would have made itself: identical model input.
    proc = Qwen2VLImageProcessorPil.from_pretrained(
        tiny_model_dir, size={"shortest_edge": budget.min_pixels, "longest_edge": budget.max_pixels},
        min_pixels=budget.min_pixels, max_pixels=budget.max_pixels)
    direct = proc(images=[image], return_tensors="np")
    via_png = proc(images=[sent.convert("RGB")], return_tensors="np")
    assert (direct["image_grid_thw"] == via_png["image_grid_thw"]).all()
    assert np.array_equal(direct["pixel_values"], via_png["pixel_values"])

    server = scripted(lambda body, n: (200, completion("ok"), []))
    b = backend(server.url, budget=budget)
    try:
        b.generate([ChatRequest(text="t", image=image, image_key="k")] * 2, GenerationConfig(max_new_tokens=2))
    finally:
        b.close()
    content = server.calls[0][1]["messages"][0]["content"]
    assert content[0] == {"type": "image_url", "image_url": {"url": url}} and content[1]["type"] == "text"


def test_helpers():
    assert heal_split("<answer>", ("A", "B")) == ("<answer", ">")
    assert heal_split("<score>", tuple("12345")) == ("<score>", "")
    assert heal_split("answer:\n", ("real", "fake")) == ("answer:\n", "")
    assert heal_split("", ("A",)) == ("", "")
    assert pieces_from_bytes(["é".encode()[:1], "é".encode()[1:] + b"x"]) == ["", "éx"]
    e = [{"token": "\ufffd", "logprob": -1.0, "bytes": list("é".encode()[:1])},
         {"token": "\ufffd", "logprob": -1.0, "bytes": list("é".encode()[1:])},
         {"token": "<|im_end|>", "logprob": -0.1, "bytes": list(b"<|im_end|>")}]
    steps = steps_from_logprobs("é", e)
    assert [(s.offset, s.token) for s in steps] == [(0, ""), (0, "é")]
    assert steps_from_logprobs("abc", [{"token": "xy", "logprob": 0.0}]) is None
    import random

    rng = random.Random(0)
    assert all(0.05 <= backoff_delay(3, 0.1, 30, None, rng) <= 0.8 for _ in range(50))
    assert backoff_delay(0, 0.1, 30, 2.0, rng) == 2.0 and backoff_delay(0, 0.1, 5, 3600, rng) == 120
    with pytest.raises(ValueError, match="--base-url is required"):
        OpenAIBackend(LoadOptions(model="m"))
    with pytest.raises(ValueError, match="--adapter"):
        OpenAIBackend(LoadOptions(model="m", adapter="x", remote=RemoteOptions(base_url="http://127.0.0.1:9/v1")))
    with pytest.raises(ValueError, match="--concurrency"):
        RemoteOptions(concurrency=0)


def test_reasks_only_replace_unparsable_answers(scripted, tmp_path):
    def respond(body, n):
        text = body["messages"][0]["content"][-1]["text"]
        if body["temperature"] == 0:
            return 200, completion("no tag here" if "bad" in text else "<answer>A</answer>"), []
        # re-asks: sampled, seed advances; the first re-ask still fails, the second parses
        return 200, completion("<answer>B</answer>" if body["seed"] == 2 else "still nothing"), []

    server = scripted(respond)
    Image.new("RGB", (30, 30)).save(tmp_path / "x.png")
    samples = [Sample(id=f"s{i}", image=tmp_path / "x.png", label="fake", where=f"d:{i}",
                      response_a="bad" if i == 1 else "good", response_b="b") for i in range(3)]
    b = backend(server.url)
    try:
        none = PairwiseJudge(b, generation=GenerationConfig(max_new_tokens=8)).compare(samples, both_orders=False)
        calls_without = len(server.calls)
        two = PairwiseJudge(b, generation=GenerationConfig(max_new_tokens=8, reasks=2)).compare(samples, both_orders=False)
    finally:
        b.close()
    assert [v.choice for v in none] == ["A", None, "A"] and calls_without == 3
    assert [v.choice for v in two] == ["A", "B", "A"]
    reasks = [c[1] for c in server.calls[calls_without + 3:]]
    assert [(r["temperature"], r["seed"]) for r in reasks] == [(0.7, 1), (0.7, 2)]
    with pytest.raises(ValueError, match="--reasks"):
        PointwiseJudge(b, generation=GenerationConfig(reasks=-1)).score(
            [Sample(id="z", image=tmp_path / "x.png", label="fake", response="r")])


def test_reasks_are_a_judge_setting_on_any_backend(tmp_path):
    from deepfakejudge.backends import Backend, Capabilities, Generation

    class Once(Backend):
        name = "once"
        capabilities = Capabilities(logprobs=False, choice_probs=False)

        def __init__(self):
            self.configs = []

        def generate(self, requests, config):
            self.configs.append(config)
            return [Generation("<score>3</score>" if config.temperature > 0 else "?") for _ in requests]

        def describe(self):
            return {}

    Image.new("RGB", (30, 30)).save(tmp_path / "x.png")
    sample = Sample(id="a", image=tmp_path / "x.png", label="fake", response="r")
    b = Once()
    (v,) = PointwiseJudge(b, generation=GenerationConfig(reasks=1)).score([sample])
    assert v.score == 3 and [c.temperature for c in b.configs] == [0.0, 0.7]
    assert PointwiseJudge(Once()).score([sample])[0].score is None
    assert not isinstance(v, RowError)


def test_requests_in_flight_are_bounded_by_concurrency(scripted):
    state = {"now": 0, "max": 0}
    lock = threading.Lock()

    def respond(body, n):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.15)
        with lock:
            state["now"] -= 1
        return 200, completion("ok"), []

    server = scripted(respond)
    b = backend(server.url, concurrency=3)
    try:
        out = b.generate([req(f"t{i}") for i in range(10)], GenerationConfig(max_new_tokens=2))
    finally:
        b.close()
    assert len(out) == 10 and len(server.calls) == 10 and state["max"] == 3
