"""The authors' prompts for the released judges: fetched (never shipped), checked against the
pinned sha256, cached, read in text mode; released judges get them by default; official ms-swift
rows are sent as written. What the model is sent is observed on a recording OpenAI-compatible
server on 127.0.0.1, not taken from the summary.

The project holds no copy of the authors' text, so tests serve stand-in files of the same shape
(CRLF line ends, literal braces) and point the pinned hashes at them (`prompts.template.PINNED_SHA256` is
a module constant; monkeypatching it is how a test stands in for the real file). Where the real files sit
beside the clone, one test checks them with the real hashes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image
from serving import RecordingChatServer

from deepfakejudge.cli import main
from deepfakejudge.prompts import load_template, official, resolve_template
from deepfakejudge.prompts import template as template_core
from deepfakejudge.prompts.official import OfficialPromptMissing, official_template, released_judge, released_kind

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "deepfakejudge-official"
POINTWISE_ID = "MBZUAI/Qwen-2.5-VL-Instruct-3B-Pointwise-DFJ"
PAIRWISE_ID = "MBZUAI/Qwen-2.5-VL-Instruct-7B-Pairwise-DFJ"

# Stand-ins of the same shape as the authors' files: CRLF, the named placeholders, literal braces.
STAND_IN = {
    "pointwise": (b"Stand-in rubric for a test.\r\nTrue class: {ground_truth_label}\r\n"
                  b"Explanation:\r\n{candidate_response}\r\n\r\nAnswer as\r\n<reasoning>{why}</reasoning>\r\n"
                  b"<score>{integer score from 1 to 5}</score>\r\n"),
    "pairwise": (b"Stand-in pairwise rubric.\r\nTrue class: {ground_truth_label}\r\nFirst:\r\n{response_a}\r\n"
                 b"Second:\r\n{response_b}\r\n<answer>{A_or_B}</answer>\r\n"),
}


class FileServer:
    """Serves `files` {url path: bytes} on 127.0.0.1 and counts the GETs."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.hits = files, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.hits.append(self.path)
                body = outer.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/raw"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/raw"  # nothing listens there once the socket is closed


@pytest.fixture
def prompts(monkeypatch, tmp_path):
    """The stand-ins served over HTTP, pinned as the official files; an empty user cache."""
    server = FileServer({f"/raw/{kind}/prompt.txt": raw for kind, raw in STAND_IN.items()})
    monkeypatch.setattr(template_core, "PINNED_SHA256", {k: hashlib.sha256(v).hexdigest() for k, v in STAND_IN.items()})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv(official.URL_ENV, server.url)
    monkeypatch.delenv(official.FOLDER_ENV, raising=False)
    yield server
    server.close()


@pytest.fixture
def model():
    servers = []

    def make(answer):
        servers.append(RecordingChatServer(answer))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def text_mode(raw: bytes, tmp_path: Path) -> str:
    path = tmp_path / "text-mode.txt"
    path.write_bytes(raw)
    with open(path) as fh:  # what the official inference scripts do
        return fh.read()


# -- resolution --------------------------------------------------------------------------------


def test_download_is_checked_cached_and_read_in_text_mode(prompts, tmp_path):
    t = official_template("pointwise")
    assert t.official and t.text == text_mode(STAND_IN["pointwise"], tmp_path) and "\r" not in t.text
    assert t.name.startswith("official:KjAeRsTuIsK/DeepfakeJudge@ef7046374ed6")
    assert prompts.hits == ["/raw/pointwise/prompt.txt"]
    cached = tmp_path / "xdg" / "deepfakejudge" / "official-prompts" / official.COMMIT / "pointwise" / "prompt.txt"
    assert cached.read_bytes() == STAND_IN["pointwise"]  # the raw bytes, as pinned
    again = official_template("pointwise")
    assert again == t and prompts.hits == ["/raw/pointwise/prompt.txt"]  # from the cache: no second download


def test_a_file_that_is_not_the_pinned_one_is_refused(prompts, tmp_path, monkeypatch):
    prompts.files["/raw/pairwise/prompt.txt"] = STAND_IN["pairwise"].replace(b"\r\n", b"\n")  # LF: other bytes
    with pytest.raises(OfficialPromptMissing, match=r"sha256 .* is not the authors' pairwise prompt"):
        official_template("pairwise")
    assert not (tmp_path / "xdg" / "deepfakejudge" / "official-prompts" / official.COMMIT / "pairwise").exists()
    # A damaged cached copy is not used, and said so when nothing else works.
    cached = tmp_path / "xdg" / "deepfakejudge" / "official-prompts" / official.COMMIT / "pointwise" / "prompt.txt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"edited {ground_truth_label} {candidate_response}")
    monkeypatch.setenv(official.URL_ENV, closed_port_url())
    with pytest.raises(OfficialPromptMissing, match="cached copy .* is damaged"):
        official_template("pointwise")
    # An explicit --template PATH with other bytes is used, recorded as not official.
    path = tmp_path / "mine.txt"
    path.write_bytes(STAND_IN["pairwise"].replace(b"Stand-in", b"Edited"))
    mine = resolve_template(str(path), "pairwise", model=PAIRWISE_ID)
    assert not mine.official and mine.name == str(path) and "Edited" in mine.text
    path.write_bytes(STAND_IN["pairwise"])
    assert load_template(path, "pairwise").official


def test_the_environment_folder_comes_before_cache_and_download(prompts, tmp_path, monkeypatch):
    folder = tmp_path / "official"
    (folder / "pointwise").mkdir(parents=True)
    (folder / "pointwise" / "prompt.txt").write_bytes(STAND_IN["pointwise"])
    monkeypatch.setenv(official.FOLDER_ENV, str(folder))
    assert official_template("pointwise").official and prompts.hits == []
    (folder / "pointwise" / "prompt.txt").write_bytes(STAND_IN["pointwise"] + b"x")
    with pytest.raises(OfficialPromptMissing, match=official.FOLDER_ENV):
        official_template("pointwise")


def test_offline_without_a_copy_is_one_line_that_says_how_to_supply_it(prompts, monkeypatch):
    monkeypatch.setenv(official.URL_ENV, closed_port_url())
    with pytest.raises(OfficialPromptMissing) as err:
        resolve_template(None, "pointwise", model=POINTWISE_ID)
    message = str(err.value)
    assert "\n" not in message and official.FOLDER_ENV in message and "--template PATH" in message


def test_released_judges_are_recognised(tmp_path):
    assert released_kind(POINTWISE_ID) == "pointwise" and released_kind(PAIRWISE_ID.lower()) == "pairwise"
    assert released_kind("Qwen/Qwen2.5-VL-3B-Instruct") is None and released_kind(None) is None
    snapshot = tmp_path / "hub" / "models--MBZUAI--Qwen-2.5-VL-Instruct-7B-Pairwise-DFJ" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    assert released_judge(snapshot) == PAIRWISE_ID
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": POINTWISE_ID}))
    assert released_kind(adapter) == "pointwise"
    export = tmp_path / "export"
    export.mkdir()
    (export / "dfj_train.json").write_text(json.dumps({"base": "/somewhere/else", "released_judge": POINTWISE_ID}))
    assert released_judge(export) == POINTWISE_ID
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "dfj_train.json").write_text(json.dumps({"base": "Qwen/Qwen2.5-VL-3B-Instruct", "released_judge": None}))
    assert released_kind(plain) is None


def test_base_models_keep_the_projects_rubric_named_as_such(prompts):
    t = resolve_template(None, "pointwise", model="Qwen/Qwen2.5-VL-3B-Instruct")
    assert t.name == "dfj-default" and not t.official and prompts.hits == []
    assert resolve_template("default", "pairwise", model=PAIRWISE_ID).name == "dfj-default"
    assert resolve_template("official", "pairwise").official


@pytest.mark.reference
@pytest.mark.skipif(not REFERENCE.is_dir(), reason="the authors' files are not beside this clone")
def test_the_real_files_have_the_pinned_hashes_and_fill_in_text_mode(tmp_path, monkeypatch):
    folder = tmp_path / "official"
    for kind in ("pointwise", "pairwise"):
        raw = (REFERENCE / f"{kind}_prompt.txt").read_bytes()
        assert hashlib.sha256(raw).hexdigest() == template_core.PINNED_SHA256[kind]
        (folder / kind).mkdir(parents=True)
        (folder / kind / "prompt.txt").write_bytes(raw)
    monkeypatch.setenv(official.FOLDER_ENV, str(folder))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv(official.URL_ENV, closed_port_url())
    pw = resolve_template(None, "pointwise", model=POINTWISE_ID)
    with open(folder / "pointwise" / "prompt.txt") as fh:
        expected = fh.read().replace("{ground_truth_label}", "fake").replace("{candidate_response}", "R {x}")
    assert pw.official and pw.fill(ground_truth_label="fake", candidate_response="R {x}") == expected
    pr = resolve_template(None, "pairwise", model=PAIRWISE_ID)
    with open(folder / "pairwise" / "prompt.txt") as fh:
        expected = (fh.read().replace("{ground_truth_label}", "real").replace("{response_a}", "one")
                    .replace("{response_b}", "two"))
    assert pr.official and pr.fill(ground_truth_label="real", response_a="one", response_b="two") == expected


# -- what the model is sent --------------------------------------------------------------------


@pytest.fixture
def data(tmp_path):
    Image.new("RGB", (40, 30), (120, 30, 30)).save(tmp_path / "img.png")
    pointwise = tmp_path / "pointwise.jsonl"
    pointwise.write_text("".join(json.dumps(r) + "\n" for r in (
        {"id": "a", "image": "img.png", "label": "fake", "response": "<reasoning>warped hands</reasoning> <answer>fake</answer>"},
        {"id": "b", "image": "img.png", "label": "real", "response": "looks {fine}\r\nto me"},
    )))
    pairwise = tmp_path / "pairwise.jsonl"
    pairwise.write_text(json.dumps({"id": "p", "image": "img.png", "label": "edited", "response_a": "first one",
                                    "response_b": "second one"}) + "\n")
    return tmp_path


def judge(kind, data_file, out, url, *extra):
    return main(["judge", kind, "--model", POINTWISE_ID if kind == "pointwise" else PAIRWISE_ID, "--backend", "openai",
                 "--base-url", url, "--no-cache", "--data", str(data_file), "--out", str(out), *extra])


def test_a_released_judge_id_is_sent_the_authors_text_with_lf(prompts, model, data, tmp_path):
    server = model("<reasoning>ok</reasoning>\n<score>4</score>")
    assert judge("pointwise", data / "pointwise.jsonl", tmp_path / "pw.jsonl", server.url) == 0
    template = text_mode(STAND_IN["pointwise"], tmp_path)
    assert sorted(server.texts()) == sorted([
        template.replace("{ground_truth_label}", "fake").replace(
            "{candidate_response}", "<reasoning>warped hands</reasoning> <answer>fake</answer>"),
        # The response's own braces and CRLF are its text: only the template is read in text mode.
        template.replace("{ground_truth_label}", "real").replace("{candidate_response}", "looks {fine}\r\nto me"),
    ])
    summary = json.loads((tmp_path / "pw.summary.json").read_text())["settings"]
    assert summary["template_official"] is True and summary["template"].startswith("official:")

    server = model("<answer>A</answer>")
    assert judge("pairwise", data / "pairwise.jsonl", tmp_path / "pr.jsonl", server.url) == 0
    template = text_mode(STAND_IN["pairwise"], tmp_path)
    fill = lambda a, b: template.replace("{ground_truth_label}", "edited").replace("{response_a}", a).replace("{response_b}", b)  # noqa: E731
    assert sorted(server.texts()) == sorted([fill("first one", "second one"), fill("second one", "first one")])
    assert server.bodies[0]["max_tokens"] == 128  # the official pairwise default


def test_offline_without_the_file_is_exit_2_with_nothing_sent(prompts, model, data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(official.URL_ENV, closed_port_url())
    server = model("<reasoning>ok</reasoning>\n<score>4</score>")
    out = tmp_path / "pw.jsonl"
    assert judge("pointwise", data / "pointwise.jsonl", out, server.url) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "authors' pointwise prompt" in err[0] and official.FOLDER_ENV in err[0]
    assert server.bodies == [] and not out.exists()
    # The same for dfj reason score --judge: no fallback to another prompt.
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"id": "a", "image": "img.png", "label": "fake", "rationale": "r"}) + "\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    pred = tmp_path / "pred.jsonl"
    pred.write_text(json.dumps({"id": "a", "prediction": "fake", "explanation": "warped"}) + "\n")
    assert main(["reason", "score", "--gold", str(gold), "--pred", str(pred), "--judge", POINTWISE_ID,
                 "--judge-backend", "openai", "--judge-base-url", server.url]) == 2
    assert "authors' pointwise prompt" in capsys.readouterr().err and server.bodies == []


def test_official_msswift_rows_are_sent_as_written(prompts, model, tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "img.png")
    template = text_mode(STAND_IN["pairwise"], tmp_path)
    # As released rows may be: the prompt with CRLF kept, and one with text no template knows.
    recognised = template.replace("\n", "\r\n").replace("{ground_truth_label}", "fake").replace(
        "{response_a}", "A says\r\nfake").replace("{response_b}", "B says real")
    unknown = "Some other wording\r\nof a pairwise prompt: {A_or_B}\n"
    rows = [
        {"id": "r1", "messages": [{"role": "user", "content": "<image>" + recognised},
                                  {"role": "assistant", "content": "<answer>A</answer>"}], "images": ["img.png"]},
        {"id": "r2", "messages": [{"role": "user", "content": "<image>" + unknown},
                                  {"role": "assistant", "content": "<answer>B</answer>"}], "images": ["img.png"]},
    ]
    data = tmp_path / "swift.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    server = model("<answer>A</answer>")
    assert judge("pairwise", data, tmp_path / "one.jsonl", server.url, "--one-order", "--template", "official") == 0
    assert sorted(server.texts()) == sorted([recognised, unknown])  # byte for byte, minus the <image> marker
    # Both orders: the swapped pass exchanges the two responses inside the row's own text; the
    # unrecognised row cannot be swapped and says so.
    server = model("<answer>A</answer>")
    assert judge("pairwise", data, tmp_path / "both.jsonl", server.url, "--template", "official",
                 "--allow-errors") == 0
    swapped = recognised.replace("A says\r\nfake", "\0").replace("B says real", "A says\r\nfake").replace("\0", "B says real")
    assert sorted(server.texts()) == sorted([recognised, swapped])
    rows = [json.loads(line) for line in (tmp_path / "both.jsonl").read_text().splitlines()]
    (error,) = [r for r in rows if "error" in r]
    assert error["id"] == "r2" and "--one-order" in error["error"]


def test_a_local_folder_of_a_released_judge_gets_the_official_prompt(prompts, model, data, tmp_path, tiny_model_dir):
    # A local copy named like the release (a download with `hf download --local-dir`): same default.
    local = tmp_path / "Qwen-2.5-VL-Instruct-3B-Pointwise-DFJ"
    shutil.copytree(tiny_model_dir, local)
    server = model("<reasoning>ok</reasoning>\n<score>2</score>")
    assert main(["judge", "pointwise", "--model", str(local), "--backend", "openai", "--base-url", server.url,
                 "--no-cache", "--data", str(data / "pointwise.jsonl"), "--out", str(tmp_path / "o.jsonl"),
                 "--limit", "1"]) == 0
    assert server.texts()[0].startswith("Stand-in rubric for a test.\nTrue class: fake\n")


# -- the other commands go through the same resolution -------------------------------------------


def released_copy(tiny_model_dir, tmp_path, name="Qwen-2.5-VL-Instruct-3B-Pointwise-DFJ"):
    """A tiny checkpoint in a folder named like a released judge (as `hf download --local-dir` makes)."""
    local = tmp_path / name
    if not local.exists():
        shutil.copytree(tiny_model_dir, local)
    return local


def test_training_on_a_released_base_uses_the_authors_prompt_and_rows_as_written(prompts, tiny_model_dir, tmp_path, capsys):
    Image.new("RGB", (40, 30)).save(tmp_path / "img.png")
    template = text_mode(STAND_IN["pointwise"], tmp_path)
    own = "A wording no template has\r\nscore it\n"
    rows = [
        {"id": "canon", "image": "img.png", "label": "fake", "response": "r", "score": 4, "rationale": "why"},
        {"id": "swift", "messages": [{"role": "user", "content": "<image>" + own},
                                     {"role": "assistant", "content": "<reasoning>x</reasoning>\n<score>2</score>"}],
         "images": ["img.png"]},
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from deepfakejudge.data import load_records
    from deepfakejudge.train.examples import build_examples

    official_t = resolve_template(None, "pointwise", model=str(released_copy(tiny_model_dir, tmp_path)))
    examples, errors = build_examples(load_records(data, (official_t,), verbatim=True).samples, official_t)
    assert errors == [] and {e.id: e.prompt for e in examples} == {
        "canon": template.replace("{ground_truth_label}", "fake").replace("{candidate_response}", "r"),
        "swift": own,  # the row's own text, line endings included
    }
    assert main(["train", "pointwise", "--base", str(released_copy(tiny_model_dir, tmp_path)), "--data", str(data),
                 "--out", str(tmp_path / "run"), "--dry-run", "--json", "--max-pixels", str(16 * 28 * 28)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["template"]["official"] is True and summary["data"]["examples"] == 2


def test_bootstrap_asks_a_released_evaluator_with_the_authors_prompt(prompts):
    import argparse

    from deepfakejudge.bootstrap import RolePrompts
    from deepfakejudge.cli.bootstrap import evaluator_template

    args = argparse.Namespace(evaluator_template=None, evaluator_model=POINTWISE_ID, evaluator_adapter=None)
    assert evaluator_template(args) == "official"
    prompts_ = RolePrompts.load(None, evaluator_template(args))
    assert prompts_.evaluate.official and prompts_.evaluator_kind == "judge"
    args = argparse.Namespace(evaluator_template=None, evaluator_model="Qwen/Qwen2.5-VL-7B-Instruct", evaluator_adapter=None)
    assert evaluator_template(args) is None  # a base model keeps the reference-guided evaluator prompt


def test_serve_gives_a_released_judge_the_authors_prompt(prompts, tiny_model_dir, tmp_path, monkeypatch):
    import base64
    import io

    import uvicorn
    from fastapi.testclient import TestClient

    from deepfakejudge.backends.base import Backend, Capabilities, Generation
    from deepfakejudge.cli import serve as serve_cli

    class Spy(Backend):
        """Records what the model is sent; answers like a pointwise judge."""

        name = "spy"
        capabilities = Capabilities(logprobs=False, choice_probs=False)

        def __init__(self):
            self.texts = []

        def generate(self, requests, config):
            self.texts += [r.text for r in requests]
            return [Generation(text="<reasoning>ok</reasoning>\n<score>3</score>", finish_reason="stop") for _ in requests]

        def describe(self):
            return {"backend": "spy", "model": "spy"}

        def close(self):
            pass

    spy = Spy()
    answers = []

    def fake_run(app, **kw):
        buf = io.BytesIO()
        Image.new("RGB", (30, 30)).save(buf, "PNG")
        with TestClient(app) as client:
            answers.append(client.post("/v1/judge/pointwise", json={
                "image": base64.b64encode(buf.getvalue()).decode(), "label": "fake", "response": "seams"}))

    monkeypatch.setattr(serve_cli, "backend_from_args", lambda args: spy)
    monkeypatch.setattr(uvicorn, "run", fake_run)
    assert main(["serve", "--model", str(released_copy(tiny_model_dir, tmp_path)), "--device", "cpu"]) == 0
    assert answers[0].status_code == 200, answers[0].text
    template = text_mode(STAND_IN["pointwise"], tmp_path)
    assert spy.texts == [template.replace("{ground_truth_label}", "fake").replace("{candidate_response}", "seams")]


def test_data_commands_read_released_rows_with_template_official(prompts, tmp_path, capsys):
    Image.new("RGB", (40, 30)).save(tmp_path / "img.png")
    user = text_mode(STAND_IN["pointwise"], tmp_path).replace("{ground_truth_label}", "edited").replace(
        "{candidate_response}", "<reasoning>seam</reasoning> <answer>fake</answer>")
    data = tmp_path / "meta.jsonl"
    data.write_text(json.dumps({"id": "m1", "messages": [{"role": "user", "content": "<image>" + user},
                                                         {"role": "assistant", "content": "<score>3</score>"}],
                                "images": ["img.png"]}) + "\n")
    assert main(["data", "validate", str(data)]) == 1  # not our template: label unknown outside judging
    assert main(["data", "stats", str(data), "--template", "official", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["label"] == {"edited": 1} and stats["score"]["3"] == 1


def test_demo_says_when_the_released_judges_cannot_get_their_prompt(prompts, tmp_path, monkeypatch, capsys):
    from deepfakejudge.cli import demo

    monkeypatch.setenv(official.URL_ENV, closed_port_url())
    monkeypatch.setattr(demo, "released_available", lambda model_id: (True, "cached"))
    assert main(["demo", "--out", str(tmp_path / "demo"), "--limit", "1", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    # Not judged with another prompt: the stand-in model runs instead, and says why.
    assert "Released judges unavailable: the authors' pointwise prompt" in captured.err
    assert captured.out.count("[tiny random model: meaningless]") == 2
