import json

from deepfakejudge.cli import main


def test_demo_falls_back_to_a_tiny_model_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty cache: nothing released is there
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--limit", "4", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "Released judges unavailable: HF_HUB_OFFLINE=1" in captured.err
    assert captured.out.count("[tiny random model: meaningless]") == 2
    assert (out / "tiny-random-qwen2.5-vl" / "config.json").is_file()
    pointwise = [json.loads(line) for line in (out / "pointwise-score-only.jsonl").read_text().splitlines()]
    pairwise = [json.loads(line) for line in (out / "pairwise-score-only.jsonl").read_text().splitlines()]
    assert len(pointwise) == len(pairwise) == 4
    assert all(r["score"] in range(1, 6) for r in pointwise)
    assert all(r["choice"] in ("A", "B") and len(r["orders"]) == 2 for r in pairwise)


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
