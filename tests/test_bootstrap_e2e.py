"""`dfj bootstrap` through the real HTTP path: `dfj serve` on the tiny Qwen2.5-VL (loopback) as
generator and as evaluator, on the bundled examples. The tiny model's words are noise, so the
loop's decisions are tested with the scripted backend (test_bootstrap); here: the requests go
over HTTP with both roles at once, the files validate and are ready for `dfj train`, a rerun
sends nothing, and a run killed with SIGKILL resumes without repeating a finished call."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serving import NAME, SMALL_PIXELS, Server, free_port

from deepfakejudge.cli import main
from deepfakejudge.data import load_records

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "detect.jsonl"


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("bootstrap-serve") / "server.log"
    s = Server(tiny_model_dir, free_port(), log, "--max-logprobs", "2000", "--max-batch", "32")
    yield s
    s.stop()


def test_bootstrap_over_http_then_validate_and_train_dry_run(server, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    port = server.url.rsplit(":", 1)[1]
    argv = ["bootstrap",
            # Two addresses of one server: two backends, so the generator's and the evaluator's calls
            # of a step run side by side.
            "--generator", NAME, "--generator-backend", "openai", "--generator-base-url", f"http://127.0.0.1:{port}/v1",
            "--evaluator", NAME, "--evaluator-backend", "openai", "--evaluator-base-url", f"http://localhost:{port}/v1",
            "--evaluator-mode", "score-only", "--top-logprobs", "2000",
            "--data", str(EXAMPLES), "--out", str(out), "--limit", "3", "--rounds", "1", "--paraphrases", "1",
            # The tiny model's ratings are noise: accept any so that every output file has rows.
            "--tolerance", "4", "--generator-max-new-tokens", "12", "--max-pixels", SMALL_PIXELS,
            # 12 tokens keep the tiny model fast, and every output hits that limit: keep the cut-off ones,
            # or each would be malformed (the default, tested with the scripted backend).
            "--keep-truncated",
            "--cache", str(tmp_path / "requests.sqlite"), "--concurrency", "16", "--batch-size", "64",
            "--test-fraction", "0.34", "--json"]
    before = server.health()["requests"].get("chat", 0)
    started = time.perf_counter()
    assert main(argv) == 0
    elapsed = time.perf_counter() - started
    summary = json.loads(capsys.readouterr().out)
    served = server.health()["requests"].get("chat", 0) - before
    usage = summary["usage"]
    assert summary["complete"] and summary["errors"] == 0
    assert summary["backends"]["generator"]["server"] == "deepfakejudge"
    assert summary["backends"]["generator"]["base_url"] != summary["backends"]["evaluator"]["base_url"]
    # Every call is counted: per train image 4 generated units x (generate + evaluate + paraphrase +
    # recheck) and the gold level 5 x (evaluate + paraphrase + recheck); per test image (released
    # layout: no paraphrases) 4 x (generate + evaluate) + 1; plus a second
    # paraphrase for each one malformed or identical to its original. A call whose request was already
    # answered earlier in the run (two levels of one image can get the same noise text to rate) comes
    # from the request cache; every other one went over HTTP.
    this_run = summary["this_run"]
    test_images = summary["outputs"]["images"]["test"]
    assert usage["calls_total"] == this_run["calls_total"] >= (3 - test_images) * (4 * 4 + 3) + test_images * (4 * 2 + 1)
    assert served == this_run["calls_total"] - this_run["calls_from_cache"] > 0
    assert usage["calls"]["generate"] == 12 and usage["calls"]["evaluate"] == 15
    # dfj serve sends OpenAI's `usage` with generated text: the generator's calls are counted both ways;
    # score-only evaluator calls return probabilities only, so they are the uncounted ones.
    for kind in ("prompt_tokens", "generated_tokens"):
        assert usage[kind]["generate"] > 0 and usage[kind]["paraphrase"] > 0
        scored = {r: (n if r in ("evaluate", "recheck") else 0) for r, n in usage["calls"].items()}
        assert usage[f"calls_without_{kind}"] == scored
    assert usage["prompt_tokens"]["generate"] > 12 * 100  # each prompt holds an image and the instructions
    assert summary["outputs"]["rows"]["pointwise-train"] + summary["outputs"]["rows"]["pointwise-test"] >= 15
    rows = summary["outputs"]["rows"]
    assert rows["pointwise-train"] and rows["pointwise-test"] and rows["pairwise-train"] and rows["pairwise-test"]
    for name in ("pointwise-train", "pointwise-test", "pairwise-train", "pairwise-test"):
        assert main(["data", "validate", str(out / f"{name}.jsonl"), "--image-root", str(EXAMPLES.parent), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["problems"] == 0 and report["rows"] == rows[name]
        swift = load_records(out / "msswift" / f"{name}.jsonl")
        assert not swift.errors and len(swift.samples) == rows[name]
        assert main(["data", "validate", str(out / "msswift" / f"{name}.jsonl"), "--image-root", str(EXAMPLES.parent),
                     "--json"]) == 0
        capsys.readouterr()
    # Ready for dfj train: every row becomes an example of the tiny model's processor.
    for kind, data in (("pointwise", out / "pointwise-train.jsonl"), ("pairwise", out / "msswift" / "pairwise-train.jsonl")):
        assert main(["train", kind, "--base", str(tiny_model_dir), "--data", str(data),
                     "--out", str(tmp_path / f"train-{kind}"), "--dry-run", "--json", "--max-pixels", SMALL_PIXELS,
                     "--image-root", str(EXAMPLES.parent)]) == 0
        checked = json.loads(capsys.readouterr().out)
        assert checked["data"]["examples"] == rows[f"{kind}-train"] and checked["data"]["skipped"] == 0
    # The same run into a fresh folder with the same request cache: every call is answered by the cache.
    served_before = server.health()["requests"].get("chat", 0)
    at = argv.index("--out")
    assert main([*argv[:at + 1], str(tmp_path / "again"), *argv[at + 2:]]) == 0
    cached = json.loads(capsys.readouterr().out)
    assert server.health()["requests"].get("chat", 0) == served_before
    assert cached["this_run"]["calls_from_cache"] == cached["this_run"]["calls_total"] == this_run["calls_total"]
    assert cached["outputs"] == summary["outputs"]
    # A rerun finds everything done in the journal, not in the request cache: no request reaches the server.
    served_before = server.health()["requests"].get("chat", 0)
    at = argv.index("--cache")
    assert main([*argv[:at], "--no-cache", *argv[at + 2:]]) == 0
    again = json.loads(capsys.readouterr().out)
    assert server.health()["requests"].get("chat", 0) == served_before and again["this_run"]["calls_total"] == 0
    assert again["outputs"] == summary["outputs"]
    print(f"\nbootstrap over HTTP (tiny model, 3 images): {usage['calls_total']} calls, "
          f"{usage['generated_tokens_total']} generated tokens, {elapsed:.1f} s "
          f"({usage['calls_total'] / elapsed:.1f} calls/s); {summary['this_run']['steps']} steps")


def _events(path: Path) -> list[dict]:
    """The journal's call events; a line being written (torn) is left out."""
    events = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event["e"] != "run":
            events.append(event)
    return events


def test_sigkill_mid_run_over_http_then_rerun_repeats_no_finished_call(server, tmp_path, capsys):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "deepfakejudge", "bootstrap",
           "--generator", NAME, "--generator-backend", "openai", "--evaluator", NAME, "--evaluator-backend", "openai",
           "--base-url", server.url + "/v1", "--evaluator-mode", "score-only", "--top-logprobs", "2000",
           "--data", str(EXAMPLES), "--out", str(out), "--limit", "2", "--rounds", "1", "--paraphrases", "1",
           "--tolerance", "4", "--generator-max-new-tokens", "12", "--keep-truncated",  # as above
           "--max-pixels", SMALL_PIXELS, "--no-cache", "--batch-size", "4", "--json"]
    chat = lambda: server.health()["requests"].get("chat", 0)  # requests the server accepted
    start = chat()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    journal = out / "journal.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and len(_events(journal)) < 8:
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before the kill: {proc.communicate()[1][-2000:]!r}"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    before = _events(journal)
    served_before = chat() - start
    assert len(before) >= 8 and served_before >= len(before)

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    after = _events(journal)
    served = chat() - start
    # No finished call again: the rerun made exactly the calls the journal lacked, all over HTTP, and
    # the server saw each journaled call once plus at most the step in flight at the kill (--batch-size 4),
    # which was served but never journaled.
    assert after[: len(before)] == before
    assert summary["this_run"]["calls_total"] == len(after) - len(before) > 0
    assert summary["this_run"]["calls_from_cache"] == 0
    assert 0 <= served - len(after) <= 4
    keys = [(e["u"], e["e"], e.get("round"), e.get("slot"), e.get("attempt")) for e in after]
    assert len(keys) == len(set(keys)) == summary["usage"]["calls_total"]
    assert summary["complete"] and summary["errors"] == 0 and len({e["u"] for e in after}) == 2 * 5
    rows = summary["outputs"]["rows"]
    for name in ("pointwise-train", "pointwise-test", "pairwise-train", "pairwise-test"):
        assert rows[name] > 0, rows
        for path in (out / f"{name}.jsonl", out / "msswift" / f"{name}.jsonl"):
            assert main(["data", "validate", str(path), "--image-root", str(EXAMPLES.parent), "--json"]) == 0
            report = json.loads(capsys.readouterr().out)
            assert report["problems"] == 0 and report["rows"] == rows[name]
    print(f"\nkill/resume over HTTP: killed after {len(before)} journaled calls ({served_before} served); "
          f"{served} served in all for {len(after)} calls")
