"""`dfj bootstrap` killed with SIGKILL mid-run, then rerun: every (image, level) finishes exactly
once, no finished call is made again, and the data equals an uninterrupted run's.

The subprocess runs the real CLI with the scripted backend of test_bootstrap registered in the
backend registry; the backend appends one line per request to a log, which counts the calls."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_bootstrap import POLICIES, Scripted, config, journal, make_data, run

from deepfakejudge.bootstrap import Settings

HERE = Path(__file__).resolve().parent
RUNNER = (
    "import sys; sys.path.insert(0, {here!r});"
    "from deepfakejudge.backends import BACKENDS;"
    "BACKENDS['scripted'] = ('test_bootstrap', 'Scripted', 'dev');"
    "from deepfakejudge.cli import main; raise SystemExit(main(sys.argv[1:]))"
)


def test_sigkill_mid_run_then_rerun_finishes_each_unit_once(tmp_path):
    data = make_data(tmp_path, n=6)
    settings = dict(rounds=3, paraphrases=2, paraphrase_retries=1)
    # The same run uninterrupted, in-process: what the killed one must end up with.
    reference = Scripted(rate=POLICIES["mixed"])
    ref = run(config(tmp_path, data, out="reference", batch_size=4, seed=0, test_fraction=0.1,
                     test_layout="released", settings=Settings(**settings)), reference)
    expected_calls = sum(reference.calls.values())
    out = tmp_path / "killed"
    argv = [sys.executable, "-c", RUNNER.format(here=str(HERE)), "bootstrap",
            "--generator", "g", "--generator-backend", "scripted", "--evaluator", "g", "--evaluator-backend", "scripted",
            "--data", str(data), "--out", str(out), "--batch-size", "4", "--no-cache",
            "--rounds", "3", "--paraphrases", "2", "--paraphrase-retries", "1", "--test-fraction", "0.1"]
    env = {"DFJ_TEST_POLICY": "mixed", "PYTHONPATH": str(HERE)}
    log1, log2 = tmp_path / "calls1.jsonl", tmp_path / "calls2.jsonl"
    base_env = {**os.environ, **env}
    proc = subprocess.Popen(argv, env={**base_env, "DFJ_TEST_CALL_LOG": str(log1), "DFJ_TEST_DELAY": "0.05"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    journal_path = out / "journal.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if journal_path.exists() and len(journal_path.read_bytes().splitlines()) >= expected_calls // 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before the kill: {proc.communicate()[1][-2000:]!r}"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    before = journal(out)
    made_before = len(log1.read_text().splitlines())
    assert 0 < len(before) < expected_calls, "the kill must land mid-run"

    done = subprocess.run(argv, env={**base_env, "DFJ_TEST_CALL_LOG": str(log2)}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    made_after = len(log2.read_text().splitlines())
    after = journal(out)
    # No finished call again: the rerun made exactly the calls the journal lacked.
    assert made_after == expected_calls - len(before)
    # Lost to the kill: at most the one step in flight (4 calls).
    assert made_before - len(before) <= 4
    keys = [(e["u"], e["e"], e.get("round"), e.get("slot"), e.get("attempt")) for e in after]
    assert len(keys) == len(set(keys)) == expected_calls
    assert after[: len(before)] == before
    units = {e["u"] for e in after}
    assert len(units) == 6 * 5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["usage"]["calls_total"] == expected_calls
    for name in ("pointwise-train.jsonl", "pointwise-test.jsonl", "pairwise-train.jsonl", "rejected.jsonl",
                 "msswift/pairwise-test.jsonl"):
        assert (out / name).read_text() == (ref.out / name).read_text(), name
    print(f"\nkill/resume: killed after {len(before)}/{expected_calls} journaled calls ({made_before} made); "
          f"rerun made {made_after}")
