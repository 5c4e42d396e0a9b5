"""`dfj bootstrap` through the real HTTP path: `dfj serve` on the tiny Qwen2.5-VL (loopback) as
generator and as evaluator, on the bundled examples. The tiny model's words are noise, so the
loop's decisions are tested with the scripted backend (test_bootstrap); here: the requests go
over HTTP with both roles at once, the files validate and are ready for `dfj train`, and a
rerun sends nothing."""

from __future__ import annotations

import json
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
    # Every call is counted: 15 units x (generate + evaluate + paraphrase + recheck), plus a second
    # paraphrase for each one malformed or identical to its original. A call whose request was already
    # answered earlier in the run (two levels of one image can get the same noise text to rate) comes
    # from the request cache; every other one went over HTTP.
    this_run = summary["this_run"]
    assert usage["calls_total"] == this_run["calls_total"] >= 15 * 4
    assert served == this_run["calls_total"] - this_run["calls_from_cache"] > 0
    assert usage["calls"]["generate"] == 15 and usage["calls"]["evaluate"] == 15
    assert usage["generated_tokens"]["generate"] > 0  # counted from the server's logprobs
    rows = summary["outputs"]["rows"]
    assert rows["pointwise-train"] and rows["pointwise-test"] and rows["pairwise-train"] and rows["pairwise-test"]
    for name in ("pointwise-train", "pointwise-test", "pairwise-train", "pairwise-test"):
        assert main(["data", "validate", str(out / f"{name}.jsonl"), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["problems"] == 0 and report["rows"] == rows[name]
        swift = load_records(out / "msswift" / f"{name}.jsonl")
        assert not swift.errors and len(swift.samples) == rows[name]
        assert main(["data", "validate", str(out / "msswift" / f"{name}.jsonl"), "--json"]) == 0
        capsys.readouterr()
    # Ready for dfj train: every row becomes an example of the tiny model's processor.
    for kind, data in (("pointwise", out / "pointwise-train.jsonl"), ("pairwise", out / "msswift" / "pairwise-train.jsonl")):
        assert main(["train", kind, "--base", str(tiny_model_dir), "--data", str(data),
                     "--out", str(tmp_path / f"train-{kind}"), "--dry-run", "--json", "--max-pixels", SMALL_PIXELS]) == 0
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
