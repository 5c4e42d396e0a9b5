"""Hardening (what an attacker or a careless user can do): image paths confined to the data
folder, our pixel limit over PIL's, clean image errors, the request cache written per answer and
never holding an empty reply, the prompt-length budget."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time

import pytest
from PIL import Image

from deepfakejudge.cli import main
from deepfakejudge.data import load_records, open_image
from deepfakejudge.data.canonical import InputError
from deepfakejudge.data.images import ImageTooLarge, decode_bytes, pil_pixel_limit


def _png(path, size=(32, 32), color=(200, 30, 30)):
    Image.new("RGB", size, color).save(path)
    return path


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- 5: image paths stay inside the data folder or an --image-root ------------------------------


@pytest.fixture()
def confined(tmp_path):
    """A data folder with one good image, plus images outside it reached four ways."""
    data_dir = tmp_path / "data"
    (data_dir / "images").mkdir(parents=True)
    _png(data_dir / "images" / "ok.png")
    outside = tmp_path / "outside"
    outside.mkdir()
    _png(outside / "secret.png")
    (data_dir / "images" / "link.png").symlink_to(outside / "secret.png")
    (data_dir / "images" / "inner-link.png").symlink_to(data_dir / "images" / "ok.png")
    rows = [
        {"id": "ok", "image": "images/ok.png", "label": "real"},
        {"id": "dotdot", "image": "../outside/secret.png", "label": "real"},
        {"id": "absolute", "image": str(outside / "secret.png"), "label": "real"},
        {"id": "symlink", "image": "images/link.png", "label": "real"},
        {"id": "etc", "image": "/etc/passwd", "label": "real"},
        {"id": "inner-link", "image": "images/inner-link.png", "label": "real"},
        {"id": "absolute-inside", "image": str(data_dir / "images" / "ok.png"), "label": "real"},
    ]
    return _write_rows(data_dir / "data.jsonl", rows), outside


def test_images_outside_the_data_folder_are_error_rows_naming_the_option(confined):
    data, outside = confined
    dataset = load_records(data, image_roots=())
    assert sorted(s.id for s in dataset.samples) == ["absolute-inside", "inner-link", "ok"]
    refused = {e.id: e for e in dataset.errors}
    assert set(refused) == {"dotdot", "absolute", "symlink", "etc"}
    for error in refused.values():
        assert error.field == "image" and "--image-root" in error.message


def test_image_root_allows_a_folder_and_absolute_paths_under_it(confined):
    data, outside = confined
    dataset = load_records(data, image_roots=[outside])
    assert sorted(s.id for s in dataset.samples) == ["absolute", "absolute-inside", "dotdot", "inner-link", "ok", "symlink"]
    assert [e.id for e in dataset.errors] == ["etc"]
    with pytest.raises(ValueError, match="--image-root"):
        load_records(data, image_roots=[outside / "missing"])


def test_data_validate_reports_confinement_and_image_root_lifts_it(confined, capsys):
    data, outside = confined
    assert main(["data", "validate", str(data)]) == 1
    err = capsys.readouterr().err
    assert err.count("--image-root") == 4 and "/etc/passwd" in err
    assert main(["data", "validate", str(data), "--image-root", str(outside), "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["problems"] == 1  # /etc/passwd only


# -- 6: --max-image-pixels governs, not PIL's global limit ---------------------------------------


def _big_png(width, height) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")  # compresses to a few hundred KB
    return buffer.getvalue()


def test_our_pixel_limit_governs_above_pils_own(tmp_path):
    data = _big_png(20_000, 10_000)  # 200 MP: PIL alone refuses anything over ~179 MP
    before = Image.MAX_IMAGE_PIXELS
    image = decode_bytes(data, 250_000_000)
    assert image.size == (20_000, 10_000) and image.mode == "RGB"
    del image
    assert Image.MAX_IMAGE_PIXELS == before  # restored after the call
    with pytest.raises(ImageTooLarge, match="exceeds the limit of 100000000"):
        decode_bytes(data, 100_000_000)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    from deepfakejudge.records import Sample

    sample = Sample(id="x", image=path, label="real", where="t")
    with pytest.raises(InputError, match="--max-image-pixels"):
        open_image(sample, 100_000_000)


def test_pil_limit_is_restored_when_calls_overlap():
    before = Image.MAX_IMAGE_PIXELS
    inside = threading.Event()
    release = threading.Event()

    def hold():
        with pil_pixel_limit(300_000_000):
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=hold)
    worker.start()
    assert inside.wait(10)
    with pil_pixel_limit(1000):  # a smaller limit never lowers another call's
        assert Image.MAX_IMAGE_PIXELS == 300_000_000
    assert Image.MAX_IMAGE_PIXELS == 300_000_000
    release.set()
    worker.join(10)
    assert Image.MAX_IMAGE_PIXELS == before


def test_empty_and_unknown_images_are_named_without_object_addresses(tmp_path):
    from deepfakejudge.records import Sample

    for name, content, needle in (("empty.png", b"", "empty (0 bytes)"), ("junk.png", b"not an image", "cannot decode")):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(InputError) as caught:
            open_image(Sample(id=name, image=path, label="real", where="t"))
        assert needle in caught.value.message and "object at 0x" not in caught.value.message
        assert str(path) in caught.value.message
    assert os.path.exists(tmp_path / "empty.png")


# -- 3 and 4: the request cache writes each answer as it arrives, and never an empty reply -------


def _scripted_server(delay: float = 0.0, empty_for: str | None = None):
    """A loopback OpenAI-compatible server that counts each distinct prompt it is asked."""
    from test_openai_backend import Scripted, completion

    def respond(body, n):
        time.sleep(delay)
        text = _prompt_of(body)
        if empty_for is not None and empty_for in text:
            return 200, completion(None), ()
        return 200, completion("<reasoning>fine</reasoning> <score>3</score>"), ()

    return Scripted(respond)


def _prompt_of(body) -> str:
    content = body["messages"][0]["content"]
    return "".join(p.get("text", "") for p in content) if isinstance(content, list) else content


def test_empty_or_null_reply_is_a_model_error_and_never_cached(tmp_path):
    from test_openai_backend import backend

    from deepfakejudge.backends import BackendError, ChatRequest, GenerationConfig
    from deepfakejudge.backends.cache import CachedBackend, RequestCache

    server = _scripted_server(empty_for="EMPTY")
    try:
        cached = CachedBackend(backend(server.url), RequestCache(tmp_path / "c.sqlite"))
        requests = [ChatRequest(text="judge EMPTY"), ChatRequest(text="judge this")]
        first = cached.generate_each(requests, GenerationConfig(max_new_tokens=8))
        assert isinstance(first[0], BackendError) and "empty content" in str(first[0])
        assert first[1].text.endswith("<score>3</score>")
        assert len(cached.cache) == 1  # only the answer with content
        again = cached.generate_each(requests, GenerationConfig(max_new_tokens=8))
        assert isinstance(again[0], BackendError)
        asked = [_prompt_of(body) for _, body, _ in server.calls]
        assert asked.count("judge EMPTY") == 2 and asked.count("judge this") == 1  # asked again, not cached
        cached.close()
    finally:
        server.close()


def test_kill_9_during_a_cached_remote_run_re_asks_only_requests_in_flight(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _png(images / "a.png")
    n, concurrency = 40, 2
    data = _write_rows(tmp_path / "data.jsonl", [
        {"id": f"r{i}", "image": "images/a.png", "label": "fake", "response": f"explanation number {i}"}
        for i in range(n)])
    server = _scripted_server(delay=0.1)
    cache, out = tmp_path / "cache.sqlite", tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "deepfakejudge", "judge", "pointwise", "--backend", "openai", "--model", "m",
           "--base-url", server.url, "--data", str(data), "--out", str(out), "--cache", str(cache),
           "--batch-size", "16", "--concurrency", str(concurrency), "--max-new-tokens", "16"]
    env = {**os.environ, "OPENAI_API_KEY": "k"}
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while len(server.calls) < 10 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert len(server.calls) >= 10, proc.stderr.read().decode()[-2000:] if proc.poll() is not None else ""
        proc.kill()  # kill -9, mid-batch: the batch of 16 has not ended
        proc.wait(30)
        before = len(server.calls)
        assert before < 16  # the kill landed inside the first batch
        done = subprocess.run(cmd, env=env, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        asked = [_prompt_of(body) for _, body, _ in server.calls]
        re_asked = len(asked) - len(set(asked))
        assert len(set(asked)) == n
        assert re_asked <= concurrency, (re_asked, before)  # at most the requests in flight at the kill
        print(f"\nkill -9 after {before} requests asked (batch of 16, --concurrency {concurrency}): "
              f"{re_asked} asked again on resume")
        assert len(out.read_text().splitlines()) == n
    finally:
        server.close()


# -- 1: the prompt-length budget ------------------------------------------------------------------


def test_a_10_mb_row_is_one_error_row_in_bounded_memory_and_is_not_retried(tiny_model_dir, tmp_path):
    """20 rows, one with a 10 MB response: 19 verdicts, one error row naming the field, its
    length and the limit, peak memory of the run far under what tokenizing it would take."""
    images = tmp_path / "images"
    images.mkdir()
    _png(images / "a.png")
    rows = [{"id": f"r{i}", "image": "images/a.png", "label": "fake", "response": f"<reasoning>ok {i}</reasoning>"}
            for i in range(20)]
    rows[7]["response"] = "blurry hands " * (10 * 2**20 // 13)
    data = _write_rows(tmp_path / "data.jsonl", rows)
    out = tmp_path / "out.jsonl"
    script = (
        "import resource, sys\n"
        "from deepfakejudge.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "sys.exit(code)\n"
    )
    cmd = [sys.executable, "-c", script, "judge", "pointwise", "--model", str(tiny_model_dir), "--data", str(data),
           "--out", str(out), "--device", "cpu", "--max-pixels", str(16 * 28 * 28), "--max-new-tokens", "4",
           "--mode", "score-only", "--batch-size", "8"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-2000:]  # error rows without --allow-errors
    peak_gb = int(done.stdout.split("PEAK_KB")[1].split()[0]) / 2**20
    assert peak_gb < 3.0, peak_gb
    print(f"\n10 MB row among 20: peak resident {peak_gb:.2f} GB")
    results = [json.loads(line) for line in out.read_text().splitlines()]
    errors = [r for r in results if "error" in r]
    assert len(results) == 20 and len(errors) == 1
    (error,) = errors
    assert error["id"] == "r7" and error["field"] == "response"
    assert str(len(rows[7]["response"])) in error["error"] and "4096 tokens" in error["error"]
    assert "--max-prompt-tokens" in error["error"]
    # An input error: --retry-errors does not ask it again.
    again = subprocess.run([*cmd, "--retry-errors", "--json"], capture_output=True, text=True, timeout=600)
    summary = json.loads(again.stdout.splitlines()[-2])
    assert summary["this_run"]["judged"] == 0 and summary["errors"] == 1


def test_prompt_budget_counts_tokens_below_the_character_bound(tiny_backend):
    from deepfakejudge.backends import ChatRequest, GenerationConfig
    from deepfakejudge.backends.budget import PromptBudget, PromptTooLong, tokenizer_budget

    budget = tokenizer_budget(tiny_backend.processor.tokenizer, 50, 0)
    short, long = ChatRequest(text="a short prompt"), ChatRequest(text="word " * 60)
    assert budget.check(short) is None
    over = budget.check(long)
    assert isinstance(over, PromptTooLong) and over.tokens is not None and over.tokens > 50
    assert len(long.text) <= 50 * budget.max_token_chars  # refused by the count, not the bound
    # Without a tokenizer only the bound applies: never over a remote server's exact count.
    loose = PromptBudget(50)
    assert loose.check(long) is None and loose.check(ChatRequest(text="x" * 401)) is not None
    # The backend refuses it without a model call; the rest of the batch is answered.
    before = tiny_backend.prompt_budget
    object.__setattr__(tiny_backend, "prompt_budget", budget)
    try:
        results = tiny_backend.generate_each([short, long], GenerationConfig(max_new_tokens=2))
    finally:
        tiny_backend.prompt_budget = before
    assert not isinstance(results[0], PromptTooLong) and isinstance(results[1], PromptTooLong)


def test_data_validate_reports_rows_over_the_prompt_budget(tiny_model_dir, tmp_path, capsys):
    rows = [{"id": "ok", "image": "a.png", "label": "real", "response": "fine"},
            {"id": "huge", "image": "a.png", "label": "real", "response": "x" * 2_000_000},
            {"id": "long", "image": "a.png", "label": "real", "response": "many words " * 500}]
    data = _write_rows(tmp_path / "d.jsonl", rows)
    assert main(["data", "validate", str(data), "--no-images", "--json"]) == 1  # 2 MB: certainly over 128000
    err = capsys.readouterr().err
    assert "d.jsonl:2: field 'response': is 2000000 characters" in err and "d.jsonl:3" not in err
    # With the model's tokenizer the count is exact: 1000 words are over 1000 tokens.
    assert main(["data", "validate", str(data), "--no-images", "--tokenizer", str(tiny_model_dir),
                 "--max-prompt-tokens", "1000"]) == 1
    err = capsys.readouterr().err
    assert "d.jsonl:3: field 'response'" in err and "over the limit of 1000 tokens" in err and "d.jsonl:1" not in err


# -- 7: dfj serve refuses to bind beyond this machine without a key ------------------------------


def test_serve_on_all_interfaces_without_a_key_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DFJ_SERVE_API_KEY", raising=False)
    missing = tmp_path / "no-model"  # never loaded: the refusal comes first
    assert main(["serve", "--model", str(missing), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--api-key" in err and "--insecure-no-key" in err
    # With the explicit opt-out the command goes on (and fails later, on the missing model).
    assert main(["serve", "--model", str(missing), "--host", "0.0.0.0", "--insecure-no-key"]) == 2
    assert "no-model" in capsys.readouterr().err


def test_bootstrap_reads_images_only_under_the_data_folder_or_an_image_root(confined):
    from pathlib import Path

    from deepfakejudge.bootstrap.run import BootstrapConfig, select_samples

    data, outside = confined
    _, errors = select_samples(BootstrapConfig(data=data, out=Path("unused")))
    refused = {e.id for e in errors if "--image-root" in e.message}
    assert refused == {"dotdot", "absolute", "symlink", "etc"}
    _, errors = select_samples(BootstrapConfig(data=data, out=Path("unused"), image_roots=(outside,)))
    assert {e.id for e in errors if "--image-root" in e.message} == {"etc"}
