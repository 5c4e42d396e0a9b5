"""`dfj judge` end to end on the tiny random Qwen2.5-VL, loaded by path as users load real models."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from deepfakejudge.cli import main

SMALL = ["--max-pixels", str(16 * 28 * 28), "--device", "cpu", "--max-image-pixels", "50000"]
RESPONSE = "<reasoning>The fence is smeared in the upper left.</reasoning> <answer>fake</answer>"


def rows(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def dataset(tmp_path):
    """Six good rows plus every kind of bad input the issue lists."""
    Image.new("RGB", (64, 48), (200, 40, 40)).save(tmp_path / "ok.png")
    Image.new("RGB", (48, 64), (20, 140, 40)).save(tmp_path / "ok2.jpg")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    Image.new("L", (300, 300)).save(tmp_path / "big.png")
    base = {"label": "edited", "response": RESPONSE, "response_a": RESPONSE, "response_b": "<reasoning>Looks fine.</reasoning> <answer>real</answer>"}
    good = [dict(base, id=f"g{i}", image="ok.png" if i % 2 else "ok2.jpg") for i in range(6)]
    bad = [
        dict(base, id="missing", image="absent.png"),
        dict(base, id="corrupt", image="corrupt.png"),
        dict(base, id="bomb", image="big.png"),
        dict(base, id="label", image="ok.png", label="deepfake"),
        dict(base, id="bbox", image="ok.png", artifacts=[{"category": "texture", "bbox": [0, 0, 65, 10], "expression": "x"}]),
        dict(base, id="empty", image="ok.png", response="   ", response_a=" ", response_b=""),
        dict(base, id="g0", image="ok.png"),  # duplicate id
    ]
    lines = [json.dumps(r).encode() + b"\n" for r in good[:3] + bad] + [b'{"id": "trunc", "image": "ok.png"\n', b'{"id": "bytes", "label": "fake", "response": "\xff\xfe"}\n'] + [json.dumps(r).encode() + b"\n" for r in good[3:]]
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"".join(lines))
    return path


EXPECTED_ERRORS = {"missing": "image", "corrupt": "image", "bomb": "image", "label": "label",
                   "bbox": "artifacts[0].bbox"}


def _check_results(out: Path, kind: str):
    got = rows(out)
    ok = [r for r in got if "error" not in r]
    err = [r for r in got if "error" in r]
    assert sorted(r["id"] for r in ok) == [f"g{i}" for i in range(6)]
    by_id = {r["id"]: r for r in err if r["id"] is not None}
    assert {k: by_id[k]["field"] for k in EXPECTED_ERRORS} == EXPECTED_ERRORS
    assert by_id["empty"]["field"] == ("response" if kind == "pointwise" else "response_a")
    anonymous = sorted(r["error"].split(":")[0] for r in err if r["id"] is None)
    assert anonymous == ["duplicate id 'g0' (first on line 1)", "malformed JSON", "not UTF-8 (byte 46 of the line)"]
    assert all(r["where"].startswith(str(out.parent / "data.jsonl") + ":") for r in err)
    return ok, err


def test_pointwise_generate_end_to_end(tiny_model_dir, dataset, tmp_path, capsys):
    out = tmp_path / "pw.jsonl"
    argv = ["judge", "pointwise", "--model", str(tiny_model_dir), "--data", str(dataset), "--out", str(out),
            "--batch-size", "4", "--max-new-tokens", "24", "--json", *SMALL]
    assert main(argv) == 1  # errors present, no --allow-errors
    summary = json.loads(capsys.readouterr().out)  # stdout holds exactly one JSON object
    ok, err = _check_results(out, "pointwise")
    assert summary["judged"] == 6 and summary["errors"] == len(err) == 9
    assert summary["unparsable"] == sum(r["score"] is None for r in ok)
    for r in ok:
        assert r["raw"] is not None
        if r["score"] is None:  # a random model rarely writes a tag: nothing may be invented
            assert r["probs"] is None and r["expected_score"] is None
        else:
            assert r["score"] in range(1, 6) and sum(r["probs"].values()) == pytest.approx(1.0)
    side = json.loads((tmp_path / "pw.summary.json").read_text())
    assert side["settings"]["template_sha256"] and side["settings"]["pixel_budget"] == {"min_pixels": 3136, "max_pixels": 12544}
    assert side["backend"]["model"] == str(tiny_model_dir) and side["backend"]["device"] == "cpu"
    assert side["provenance"]["deepfakejudge"] and side["provenance"]["date"]
    # rerun: everything is already there, nothing is judged again, exit code kept, with --allow-errors 0
    assert main(argv + ["--allow-errors"]) == 0
    assert json.loads(capsys.readouterr().out)["this_run"]["judged"] == 0
    assert len(rows(out)) == 15


def test_pointwise_score_only(tiny_model_dir, dataset, tmp_path, capsys):
    out = tmp_path / "so.jsonl"
    code = main(["judge", "pointwise", "--model", str(tiny_model_dir), "--data", str(dataset), "--out", str(out),
                 "--mode", "score-only", "--allow-errors", "--json", *SMALL])
    assert code == 0
    ok, _ = _check_results(out, "pointwise")
    for r in ok:
        probs = [r["probs"][k] for k in "12345"]
        assert r["score"] == 1 + probs.index(max(probs)) and r["raw"] is None
        assert r["expected_score"] == pytest.approx(sum((k + 1) * p for k, p in enumerate(probs)))
        assert 0 < r["choice_mass"] <= 1


def test_pairwise_both_orders_and_one_order(tiny_model_dir, dataset, tmp_path, capsys, sent_to_model):
    out = tmp_path / "pr.jsonl"
    assert main(["judge", "pairwise", "--model", str(tiny_model_dir), "--data", str(dataset), "--out", str(out),
                 "--mode", "score-only", "--json", *SMALL]) == 1
    ok, _ = _check_results(out, "pairwise")
    # What the model read: each pair in the given order, then swapped (B's text first, in A's place).
    a, b = RESPONSE, "<reasoning>Looks fine.</reasoning> <answer>real</answer>"
    texts = [r.text for r in sent_to_model]
    assert len(texts) == 2 * 6
    for given, swapped in zip(texts[::2], texts[1::2]):
        assert -1 < given.index(a) < given.index(b) and -1 < swapped.index(b) < swapped.index(a)
        assert swapped == given.replace(a, "\0").replace(b, a).replace("\0", b)
    for r in ok:
        first, second = r["orders"]
        assert (first["swapped"], second["swapped"]) == (False, True)
        assert r["p_a"] == pytest.approx((first["p_a"] + 1 - second["p_a"]) / 2)
        assert r["choice"] == ("A" if r["p_a"] > 0.5 else "B")
        assert r["agree"] == (first["choice"] != second["choice"])
    one = tmp_path / "one.jsonl"
    assert main(["judge", "pairwise", "--model", str(tiny_model_dir), "--data", str(dataset), "--out", str(one),
                 "--one-order", "--max-new-tokens", "8", "--allow-errors", *SMALL]) == 0
    ok, _ = _check_results(one, "pairwise")
    assert all(len(r["orders"]) == 1 and r["agree"] is None for r in ok)


def test_template_file_is_what_the_model_is_sent(tiny_model_dir, dataset, tmp_path, capsys, sent_to_model):
    template = tmp_path / "t.txt"
    template.write_bytes(b"Class {ground_truth_label}.\r\nRate: {candidate_response}\r\n<score>{integer score from 1 to 5}</score>")
    out = tmp_path / "t.jsonl"
    assert main(["judge", "pointwise", "--model", str(tiny_model_dir), "--data", str(dataset), "--out", str(out),
                 "--template", str(template), "--mode", "score-only", "--limit", "2", "--allow-errors", *SMALL]) == 0
    # The model received the file's text, read in text mode (CRLF -> LF), filled for each item;
    # the output-format line with its literal braces is kept as written.
    expected = f"Class edited.\nRate: {RESPONSE}\n<score>{{integer score from 1 to 5}}</score>"
    assert [r.text for r in sent_to_model] == [expected, expected]
    side = json.loads((tmp_path / "t.summary.json").read_text())
    import hashlib
    # The text as Python's text mode reads the file (CRLF -> LF), as the official scripts read theirs.
    assert side["settings"]["template_sha256"] == hashlib.sha256(template.read_bytes().replace(b"\r\n", b"\n")).hexdigest()
    assert side["settings"]["template"] == str(template) and side["settings"]["template_official"] is False
    assert side["settings"]["decoding"] == "checkpoint"
    assert side["judged"] == 2  # --limit


def test_usage_errors_name_the_argument(tiny_model_dir, dataset, tmp_path, capsys):
    base = ["judge", "pointwise", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x.jsonl")]
    assert main(base + ["--data", str(tmp_path / "nope.jsonl")]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(base + ["--data", str(dataset), "--max-pixels", "10"]) == 2
    assert "max_pixels" in capsys.readouterr().err
    assert main(base + ["--data", str(dataset), "--template", str(tmp_path / "none.txt")]) == 2
    assert "--template" in capsys.readouterr().err
    assert main(["judge", "pointwise", "--model", str(tmp_path / "no-model"), "--data", str(dataset),
                 "--out", str(tmp_path / "y.jsonl"), *SMALL]) == 2
    assert "no-model" in capsys.readouterr().err


def test_sigkill_and_resume_judges_every_id_exactly_once(tiny_model_dir, tmp_path):
    Image.new("RGB", (40, 40), (1, 2, 3)).save(tmp_path / "a.png")
    n = 14
    (tmp_path / "d.jsonl").write_text("".join(
        json.dumps({"id": f"k{i}", "image": "a.png", "label": "fake", "response": RESPONSE}) + "\n" for i in range(n)))
    out = tmp_path / "k.jsonl"
    cmd = [sys.executable, "-m", "deepfakejudge", "judge", "pointwise", "--model", str(tiny_model_dir),
           "--data", str(tmp_path / "d.jsonl"), "--out", str(out), "--batch-size", "1",
           "--max-new-tokens", "48", *SMALL]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(rows(out)) if out.read_bytes().endswith(b"\n") else None
    assert before is None or 3 <= before < n, "the kill must land mid-run"
    # Simulate the worst case too: a torn, half-written last line.
    with out.open("ab") as fh:
        fh.write(b'{"id": "k99", "sco')
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ids = [r["id"] for r in rows(out)]
    assert sorted(ids) == sorted(f"k{i}" for i in range(n)) and len(ids) == n


def test_retry_errors_judges_failed_model_calls_again(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """A failed model call (here: a simulated out-of-memory) is an error row; a plain rerun keeps it,
    --retry-errors judges that item again and keeps bad-input rows as they are."""
    from deepfakejudge.backends.base import BackendError
    from deepfakejudge.backends.hf import HFBackend

    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    rows_in = [{"id": f"r{i}", "image": "a.png", "label": "fake", "response": RESPONSE + ("" if i else " POISON")}
               for i in range(3)] + [{"id": "bad", "image": "none.png", "label": "fake", "response": RESPONSE}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_in))
    out = tmp_path / "o.jsonl"
    real = HFBackend.choice_probs

    def flaky(self, requests, choices):
        if any("POISON" in r.text for r in requests):
            raise BackendError("simulated out of memory")
        return real(self, requests, choices)

    argv = ["judge", "pointwise", "--model", str(tiny_model_dir), "--data", str(tmp_path / "d.jsonl"),
            "--out", str(out), "--mode", "score-only", "--json", *SMALL]
    monkeypatch.setattr(HFBackend, "choice_probs", flaky)
    assert main(argv) == 1
    first = {r["id"]: r for r in rows(out)}
    assert first["r0"]["field"] == "<model>" and "simulated out of memory" in first["r0"]["error"]
    assert first["bad"]["field"] == "image" and first["r1"]["score"] in range(1, 6)
    monkeypatch.setattr(HFBackend, "choice_probs", real)
    assert main(argv) == 1  # a plain rerun does not touch the failed row
    capsys.readouterr()
    assert {r["id"]: r for r in rows(out)}["r0"] == first["r0"]
    assert main(argv + ["--retry-errors"]) == 1  # still 1: the bad-input row stays
    summary = json.loads(capsys.readouterr().out)
    assert summary["this_run"]["retried_model_errors"] == 1 and summary["this_run"]["judged"] == 1
    after = rows(out)
    assert sorted(r["id"] for r in after) == ["bad", "r0", "r1", "r2"]
    by_id = {r["id"]: r for r in after}
    assert by_id["r0"]["score"] in range(1, 6) and "error" not in by_id["r0"]
    assert by_id["bad"] == first["bad"] and by_id["r1"] == first["r1"]


def test_unreachable_hub_model_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    (tmp_path / "d.jsonl").write_text(json.dumps({"id": "a", "image": "a.png", "label": "real", "response": RESPONSE}) + "\n")
    code = main(["judge", "pointwise", "--model", "Qwen/Qwen2.5-VL-3B-Instruct", "--data", str(tmp_path / "d.jsonl"),
                 "--out", str(tmp_path / "o.jsonl"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert "model 'Qwen/Qwen2.5-VL-3B-Instruct': cannot be loaded" in err and "Traceback" not in err


def test_limit_is_the_first_n_items_across_resumed_runs(tiny_model_dir, tmp_path, capsys):
    """--limit N selects the data's first N items: rerunning finds them done (nothing more is
    judged), and a larger N judges only the items beyond the first run's."""
    out = tmp_path / "pw.jsonl"
    data = Path(__file__).resolve().parents[1] / "examples" / "pointwise.jsonl"
    first_ids = [json.loads(line)["id"] for line in data.read_text().splitlines()][:5]
    argv = ["judge", "pointwise", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
            "--mode", "score-only", "--json", "--max-pixels", str(16 * 28 * 28), "--device", "cpu"]
    for limit, judged in ((3, 3), (3, 0), (5, 2)):
        assert main([*argv, "--limit", str(limit)]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["this_run"]["judged"] == judged
        assert [r["id"] for r in rows(out)] == first_ids[:limit]
