"""DFJ-Reason: BLEU-3 and BERTScore by hand, missing metrics, bad input, the reference check."""

import json
from pathlib import Path

import pytest
from serving import RecordingChatServer

from deepfakejudge.cli import main
from deepfakejudge.reason import bleu3, check, default_minilm_path, explanation, sentence_encoder, sentences
from deepfakejudge.reason.spatial import locations
from deepfakejudge.reason.stance import hedged, stance
from deepfakejudge.records import Artifact, Box, Sample

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    # Fully offline: the hub is never asked (the constant is read once at import, so set it too).
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def encoder():
    return sentence_encoder()


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def example_rows(start: int = 0, stop: int = 3) -> list[dict]:
    """Rows `start:stop` of the bundled examples/detect.jsonl (gold rationales and images)."""
    return [json.loads(line) for line in (EXAMPLES / "detect.jsonl").read_text().splitlines()][start:stop]


def rationale_preds(path: Path, gold_rows, answer: str) -> Path:
    """Predictions whose explanation is each gold row's own rationale, answering `answer`."""
    return write_jsonl(path, [
        {"id": g["id"], "response": f"<reasoning>{g['rationale']}</reasoning> <answer>{answer}</answer>"} for g in gold_rows])


def write_gold(tmp_path: Path, rows) -> Path:
    """Gold rows of examples/detect.jsonl with their images copied beside the file (images are
    read only from under the data file's folder)."""
    import shutil

    (tmp_path / "images").mkdir(exist_ok=True)
    for g in rows:
        shutil.copy(EXAMPLES / g["image"], tmp_path / "images" / Path(g["image"]).name)
    return write_jsonl(tmp_path / "gold.jsonl", [dict(g, image=f"images/{Path(g['image']).name}") for g in rows])


# -- text and BLEU-3 by hand ----------------------------------------------------------------------


def test_explanation_and_sentences():
    assert explanation("<reasoning> A b. C d? </reasoning> <answer>fake</answer>") == "A b. C d?"
    assert explanation("Looks real <answer>real</answer>") == "Looks real"
    assert explanation(None) == "" and explanation("<answer>fake</answer>") == ""
    assert sentences("One, e.g. this. Two!  Three; four") == ["One, e.g. this.", "Two!", "Three;", "four"]


def test_bleu3_by_hand():
    same = bleu3(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same.corpus == pytest.approx(1.0) and same.sentence_mean == pytest.approx(1.0)
    # Sentence level, effective order 2 (no 3-grams): p1 = 1/2, p2 = 0/1 -> exp smoothing 1/2; BP = 1.
    two = bleu3(["hello there"], ["hello world"])
    assert two.sentences[0] == pytest.approx(0.5)
    assert bleu3(["a b c"], ["x y z"]).corpus == 0.0
    assert "eff:no" in same.signature


# -- lexicon tables ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("The letters are warped and pasted on.", "anomaly"),
    ("The shadows do not match the light.", "anomaly"),  # negated normality
    ("The tripod cannot stand like that: it is not stable.", "anomaly"),
    ("I see no warping, blending seams or texture repetition.", "normal"),  # negation over a list
    ("Nothing is distorted, so this is a real photo.", "normal"),
    ("The lighting is consistent across the portrait.", "normal"),
    ("The face looks natural, but the suit has an odd pattern.", "anomaly"),  # "but" ends the negation scope
    ("The image has been edited.", "neutral"),  # a verdict names a class, not evidence
    ("A rocket on a launch pad in the evening.", "neutral"),
])
def test_stance(text, expected):
    assert stance(text) == expected


def test_hedging():
    assert hedged("I'm not sure, it could be a studio photo.") and hedged("Hard to say.")
    assert not hedged("The green sphere casts its shadow toward the light.")


@pytest.mark.parametrize("text, expected", [
    ("the grass at lower right", [("right", "bottom")]),
    ("in the upper-left corner of the image", [("left", "top")]),
    ("the galaxy right of centre reappears at the lower left", [("right", None), ("left", "bottom")]),
    ("In the upper centre, above the rocket", [("centre", "top")]),
    ("in the centre", [("centre", "centre")]),
    ("the right leg of the tripod", []),  # object-relative
    ("on the right side of the face", []),  # relative to an object
    ("at its right edge", []),
    ("light comes from the upper left and shadows fall to the lower right", []),  # directions
])
def test_locations(text, expected):
    assert [(loc.horizontal, loc.vertical) for loc in locations(text)] == expected


# -- reference check -------------------------------------------------------------------------------


@pytest.fixture
def gold(tmp_path):
    from PIL import Image

    Image.new("RGB", (300, 200)).save(tmp_path / "img.png")
    text = Artifact("text and symbols", Box(200, 140, 290, 195), "the garbled white letters on the sign at lower right")
    hand = Artifact("anatomy", Box(10, 10, 60, 60), "the six-fingered hand at upper left")
    fake = Sample(id="f", image=tmp_path / "img.png", label="fake", artifacts=(text, hand),
                  rationale="The sign's letters are garbled and the hand has six fingers.")
    real = Sample(id="r", image=tmp_path / "img.png", label="real",
                  rationale="The lighting on the face is consistent. The fabric folds of the coat are natural.")
    return fake, real


def test_reference_check_components(gold, encoder):
    fake, real = gold
    good = ("<reasoning>The white letters on the sign at lower right are garbled nonsense. "
            "The hand at upper left is deformed, with six fingers.</reasoning> <answer>fake</answer>")
    c = check(fake, good, "fake", encoder)
    assert c.label_agreement and c.evidence_kind == "artifacts" and c.evidence_found == 2
    assert c.claims == 2 and c.unsupported == 0
    assert c.spatial_checked == 2 and c.spatial_consistency == 1.0
    wrong_place = good.replace("at lower right", "at the upper left").replace("hand at upper left", "hand at lower right")
    assert check(fake, wrong_place, "fake", encoder).spatial_consistency == 0.0
    hallucinated = ("<reasoning>The sky has a repeating tiled pattern and the dog's ears are melting.</reasoning>"
                    " <answer>fake</answer>")
    h = check(fake, hallucinated, "fake", encoder)
    assert h.unsupported == 1 and h.evidence_found == 0 and h.score < c.score
    denial = "<reasoning>The letters on the sign are perfectly normal and correct.</reasoning> <answer>real</answer>"
    d = check(fake, denial, "real", encoder)
    assert not d.label_agreement and d.contradictions == 1 and d.score < h.score
    on_real = check(real, hallucinated, "fake", encoder)
    assert on_real.evidence_kind == "rationale" and on_real.unsupported == on_real.claims == 1
    assert on_real.spatial_consistency is None and on_real.components["spatial"] == 0.5
    assert c.score == pytest.approx(1 + 4 * sum(w * c.components[k] for k, w in
                                                 {"label": .3, "recall": .3, "precision": .2, "commitment": .1,
                                                  "spatial": .1}.items()))


def test_reference_check_ranks_the_example_ladders(encoder):
    """The 5-level ladders of examples/pointwise.jsonl (gold -> hallucinated): the mean Spearman
    correlation between intended level and reference score, computed, must be high, and above
    what BLEU-3 reaches on the same ladders."""
    from deepfakejudge.data import load_records
    from deepfakejudge.reason.ladder import overlap_ladders, reference_ladder

    samples = load_records(EXAMPLES / "pointwise.jsonl").samples
    result, checks = reference_ladder(samples, encoder)
    assert len(result.per_image) == 14 and len(checks) == 70
    assert result.mean_rho >= 0.9, result.per_image
    (bleu,) = overlap_ladders(samples, bleu3, None)
    assert bleu.mean_rho < result.mean_rho
    # Where it fails is reported, pair by pair, never hidden.
    assert all(inv.levels[0] > inv.levels[1] and inv.scores[0] <= inv.scores[1] for inv in result.inversions)


def test_ladder_cli(capsys, encoder):
    assert main(["reason", "ladder", "--data", str(EXAMPLES / "pointwise.jsonl"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["images"] == 14 and s["results"][0]["metric"] == "reference_score"
    assert s["results"][0]["mean_spearman"] >= 0.9
    # The CLI only formats: the library's report is the same object, and its table is what dfj prints.
    from deepfakejudge.data import load_records
    from deepfakejudge.reason.ladder import ladder_report

    dataset = load_records(EXAMPLES / "pointwise.jsonl")
    report = ladder_report(str(dataset.path), dataset.samples, encoder)
    assert json.loads(json.dumps(report.to_dict())) == s
    assert main(["reason", "ladder", "--data", str(EXAMPLES / "pointwise.jsonl")]) == 0
    assert capsys.readouterr().out == report.markdown(str(EXAMPLES / "pointwise.jsonl")) + "\n"


# -- dfj reason score: by hand, missing metrics, bad input ------------------------------------------


def test_reason_score_by_hand_and_missing_metrics(tmp_path, capsys):
    gold_rows = example_rows()
    gold = write_gold(tmp_path, gold_rows)
    # Each explanation is the gold rationale itself: BLEU-3 and BERTScore are 1.
    pred = rationale_preds(tmp_path / "pred.jsonl", gold_rows, "real")
    argv = ["reason", "score", "--pred", str(pred), "--gold", str(gold), "--json"]
    assert main(argv + ["--bertscore-model", str(default_minilm_path())]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["n"] == 3 and s["bleu3"]["value"] == pytest.approx(1.0) and s["bleu3_sentence"]["value"] == pytest.approx(1.0)
    assert s["bertscore_f1"]["value"] == pytest.approx(1.0, abs=1e-4) and s["bertscore_f1"]["n"] == 3
    assert s["dfj_score"] == {"value": None, "n": 0, "missing": "no --judge given"}
    assert s["reference_components"]["label_agreement"] == 1.0 and s["reference_score"]["value"] > 4
    # Without --bertscore-model the paper's default (roberta-large) is needed: offline it is
    # missing, with the reason, and the other metrics are still there.
    assert main(argv[:-1]) == 0
    table = capsys.readouterr().out
    assert "| pred | 3 | 1.000 | 1.000 | n/a | n/a |" in table
    assert "- BERTScore n/a: cannot load bert-score's default English model (roberta-large)" in table
    assert "- DFJ Score n/a: no --judge given" in table
    # A judge that cannot be loaded is reported the same way.
    assert main(argv + ["--judge", str(tmp_path / "no-such-judge")]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["dfj_score"]["missing"].startswith(f"cannot load the judge {tmp_path / 'no-such-judge'}")
    assert s["bleu3"]["value"] == pytest.approx(1.0)


def test_reason_score_judge_options_reach_a_remote_judge_with_the_request_cache(tmp_path, capsys):
    """`dfj reason score` takes the judge's whole model option set under --judge-: a remote judge
    on a local server, its request cache (a rerun is answered from it: no request reaches the
    server) and --judge-no-cache (asked again)."""
    gold_rows = example_rows()
    gold = write_gold(tmp_path, gold_rows)
    pred = rationale_preds(tmp_path / "pred.jsonl", gold_rows, "fake")
    server = RecordingChatServer("<reasoning>clear artifacts</reasoning>\n<score>4</score>", model_id="judge")
    try:
        argv = ["reason", "score", "--pred", str(pred), "--gold", str(gold), "--no-reference-check",
                "--bertscore-model", str(default_minilm_path()), "--json",
                "--judge", "judge", "--judge-backend", "openai", "--judge-base-url", server.url,
                "--judge-cache", str(tmp_path / "requests.sqlite"), "--judge-concurrency", "2",
                "--judge-max-new-tokens", "64"]
        assert main(argv) == 0
        first = json.loads(capsys.readouterr().out)
        assert first["dfj_score"]["value"] == pytest.approx(4.0) and first["dfj_score"]["n"] == 3
        assert len(server.bodies) == 3 and {r["max_tokens"] for r in server.bodies} == {64}
        assert (tmp_path / "requests.sqlite").is_file()
        # The same run again: every judge call is answered from the cache, none reaches the server.
        assert main(argv) == 0
        second = json.loads(capsys.readouterr().out)
        assert len(server.bodies) == 3
        assert second["dfj_score"] == first["dfj_score"]
        # --judge-no-cache: asked again.
        assert main(argv + ["--judge-no-cache"]) == 0
        assert json.loads(capsys.readouterr().out)["dfj_score"] == first["dfj_score"] and len(server.bodies) == 6
    finally:
        server.close()


def test_reason_score_judge_reads_gold_images_only_from_the_gold_folder_and_image_roots(tmp_path, capsys):
    """The judge reads the gold images as `dfj judge` does: one outside the gold file's folder (`../x`,
    a symlink out) gets no judge score and is a problem row naming --image-root, never a request;
    the text metrics still score that item."""
    import shutil

    gold_rows = example_rows()
    folder, outside = tmp_path / "gold", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    gold = write_gold(folder, gold_rows)
    rows = [json.loads(line) for line in gold.read_text().splitlines()]
    shutil.copy(EXAMPLES / gold_rows[1]["image"], outside / "b.jpg")
    shutil.copy(EXAMPLES / gold_rows[2]["image"], outside / "c.jpg")
    (folder / "link.jpg").symlink_to(outside / "c.jpg")
    rows[1]["image"], rows[2]["image"] = "../outside/b.jpg", "link.jpg"
    write_jsonl(gold, rows)
    pred = rationale_preds(tmp_path / "pred.jsonl", gold_rows, "fake")
    server = RecordingChatServer("<reasoning>clear artifacts</reasoning>\n<score>4</score>", model_id="judge")
    try:
        argv = ["reason", "score", "--pred", str(pred), "--gold", str(gold), "--no-reference-check",
                "--bertscore-model", str(default_minilm_path()), "--json",
                "--judge", "judge", "--judge-backend", "openai", "--judge-base-url", server.url, "--judge-no-cache"]
        assert main(argv) == 1  # problem rows, without --allow-errors
        out = capsys.readouterr()
        first = json.loads(out.out)
        assert first["dfj_score"]["n"] == 1 and len(server.bodies) == 1
        assert first["bleu3"]["n"] == 3  # the text metrics keep every item
        bad = [r for r in first["problems"]["rows"] if r["field"] == "image"]
        assert [r["id"] for r in bad] == [gold_rows[1]["id"], gold_rows[2]["id"]]
        assert all(r["where"].startswith(str(gold)) and "--image-root" in r["message"] for r in bad)
        assert [i.get("dfj_score") for i in first["items"]] == [4, None, None]
        assert main(argv + ["--image-root", str(outside)]) == 0
        assert json.loads(capsys.readouterr().out)["dfj_score"]["n"] == 3 and len(server.bodies) == 4
    finally:
        server.close()


# -- BERTScore: rescaled with a baseline, raw beside it ----------------------------------------------


def write_baseline(path: Path, layers: int) -> Path:
    """A LAYER,P,R,F baseline file as bert-score ships them (row index = layer)."""
    rows = ["LAYER,P,R,F"] + [f"{i},{0.20 + 0.03 * i:.4f},{0.21 + 0.03 * i:.4f},{0.19 + 0.05 * i:.4f}"
                              for i in range(layers + 1)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


CANDS = ["The helmet visor shows warped letters.", "Shadows fall the wrong way.", "A cat on a mat."]
REFS = ["Letters on the visor are warped and unreadable.", "The shadows disagree with the sun.", "A real photo."]


def test_bertscore_rescaling_is_bert_scores_own(tmp_path):
    import bert_score

    from deepfakejudge.reason import bert_scorer, bertscore

    model = str(default_minilm_path())
    baseline = write_baseline(tmp_path / "minilm.tsv", layers=6)
    scores = bertscore(bert_scorer(model, 4, "cpu", str(baseline)), CANDS, REFS)
    b = 0.19 + 0.05 * 4  # the F column at row 4
    assert scores.setting.layer == 4 and scores.setting.rescaled and scores.setting.baseline_f == pytest.approx(b)
    # bert-score itself, unrescaled and with rescale_with_baseline on the same file and layer
    raw = bert_score.BERTScorer(model_type=model, num_layers=4, device="cpu").score(CANDS, REFS)[2].tolist()
    rescaled = bert_score.BERTScorer(model_type=model, num_layers=4, device="cpu", lang="en",
                                     rescale_with_baseline=True, baseline_path=str(baseline)).score(CANDS, REFS)[2]
    assert scores.raw == pytest.approx(raw, abs=1e-6)
    assert scores.rescaled == pytest.approx(rescaled.tolist(), abs=1e-5)
    assert scores.rescaled == pytest.approx([(x - b) / (1 - b) for x in raw], abs=1e-5)
    assert scores.headline == scores.rescaled
    assert "rescaled with the baseline" in scores.setting.describe() and "layer 4" in scores.setting.describe()


def test_bertscore_without_a_baseline_is_raw_and_says_why():
    from deepfakejudge.reason import bert_scorer, bertscore

    model = str(default_minilm_path())
    scores = bertscore(bert_scorer(model, None, "cpu"), CANDS, REFS)
    assert scores.rescaled is None and scores.headline == scores.raw
    s = scores.setting
    assert s.layer == 6 and not s.rescaled and s.baseline is None  # MiniLM's last layer
    assert "has none for a local folder" in s.why_raw and "--bertscore-baseline" in s.why_raw
    assert s.describe().endswith(f"raw (not rescaled: {s.why_raw}).")


def test_bertscore_baselines_resolve_as_bert_score_ships_them(tmp_path):
    import bert_score
    import pandas as pd

    from deepfakejudge.reason import resolve_baseline

    shipped = Path(bert_score.__file__).parent / "rescale_baseline" / "en" / "roberta-large.tsv"
    # bert-score's default English model is rescaled with its shipped baseline; so is a local copy
    # named by --bertscore-baseline roberta-large
    assert resolve_baseline(None, None) == (shipped, None)
    assert resolve_baseline("/models/roberta-large", "roberta-large") == (shipped, None)
    path, why = resolve_baseline("/models/my-encoder", None)
    assert path is None and "has none for a local folder" in why
    own = write_baseline(tmp_path / "own.tsv", layers=2)
    assert resolve_baseline("/models/my-encoder", str(own)) == (own, None)
    with pytest.raises(ValueError, match="--bertscore-baseline no-such-model: neither a file nor a model"):
        resolve_baseline(None, "no-such-model")
    # At the default layer (17) a raw F1 of 0.89 rescales to about 0.35: the published range.
    b = float(pd.read_csv(shipped).iloc[17]["F"])
    assert (0.89 - b) / (1 - b) == pytest.approx(0.35, abs=0.01)


def test_bertscore_baseline_without_the_layer_is_refused(tmp_path):
    from deepfakejudge.reason import bert_scorer

    short = write_baseline(tmp_path / "short.tsv", layers=2)
    with pytest.raises(ValueError, match="needs columns LAYER,P,R,F and a row for layer 6"):
        bert_scorer(str(default_minilm_path()), None, "cpu", str(short))
    # roberta-large's layer 17 does not exist in the 6-layer MiniLM: refused, not truncated
    with pytest.raises(ValueError, match="layer 17 asked of .*, which has 6 layers"):
        bert_scorer(str(default_minilm_path()), None, "cpu", "roberta-large")


def test_bertscore_without_bert_score_installed_is_unavailable(tmp_path, monkeypatch):
    import sys

    from deepfakejudge.reason import Unavailable, bert_scorer, resolve_baseline

    monkeypatch.setitem(sys.modules, "bert_score", None)  # import bert_score raises ImportError
    monkeypatch.setitem(sys.modules, "bert_score.utils", None)
    for call in (lambda: bert_scorer(str(tmp_path), None, "cpu"), lambda: resolve_baseline(None, None)):
        with pytest.raises(Unavailable, match=r"bert-score is not installed; pip install 'deepfakejudge\[reason\]'"):
            call()


def test_reason_score_reports_rescaled_and_raw_bertscore(tmp_path, capsys):
    gold_rows = example_rows()
    gold = write_gold(tmp_path, gold_rows)
    pred = write_jsonl(tmp_path / "pred.jsonl", [
        {"id": g["id"], "response": f"<reasoning>{c}</reasoning> <answer>real</answer>"} for g, c in zip(gold_rows, CANDS)])
    baseline = write_baseline(tmp_path / "minilm.tsv", layers=6)
    argv = ["reason", "score", "--pred", str(pred), "--gold", str(gold), "--no-reference-check",
            "--bertscore-model", str(default_minilm_path()), "--bertscore-baseline", str(baseline)]
    assert main(argv + ["--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    b = 0.19 + 0.05 * 6  # MiniLM's last layer
    assert s["bertscore"]["rescaled"] is True and s["bertscore"]["layer"] == 6
    assert s["bertscore"]["baseline"] == str(baseline) and s["bertscore"]["baseline_f"] == pytest.approx(b)
    raw, head = s["bertscore_f1_raw"]["value"], s["bertscore_f1"]["value"]
    assert 0 < raw < 1 and head == pytest.approx((raw - b) / (1 - b)) and s["bertscore_f1"]["n"] == 3
    for item in s["items"]:
        assert item["bertscore_f1"] == pytest.approx((item["bertscore_f1_raw"] - b) / (1 - b))
    assert s["bleu3_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert "eff:yes" in s["bleu3_sentence_signature"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert f"| {head:.2f} | {raw:.2f} |" in table
    assert "- BLEU-3: sacrebleu nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in table
    assert f"layer 6, rescaled with the baseline {baseline} (F baseline b = {b:.4f}" in table
    # without the baseline: raw as the headline, and the footnote says why
    assert main(argv[:-2] + ["--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["bertscore"]["rescaled"] is False and "has none for a local folder" in s["bertscore"]["why_raw"]
    assert s["bertscore_f1"]["value"] == pytest.approx(raw) and s["bertscore_f1_raw"]["value"] == pytest.approx(raw)


def test_reason_score_bad_rows(tmp_path, capsys):
    gold_rows = example_rows(6, 8)
    gold = write_gold(tmp_path, gold_rows)
    good = {"id": gold_rows[0]["id"], "response": "<reasoning>Letters on the visor.</reasoning> <answer>fake</answer>"}
    pred = write_jsonl(tmp_path / "pred.jsonl", [
        good,
        {"id": gold_rows[1]["id"], "response": "<reasoning>  </reasoning> <answer>fake</answer>"},  # empty
        {"id": "nobody", "response": "<reasoning>x</reasoning> <answer>fake</answer>"},  # not in gold
        good,  # duplicate
        {"id": "p", "prediction": "fake", "p_fake": -0.2, "response": "y"},  # bad p_fake, not in gold either
    ])
    details = tmp_path / "details.jsonl"
    argv = ["reason", "score", "--pred", str(pred), "--gold", str(gold), "--json", "--no-reference-check",
            "--details", str(details)]
    assert main(argv) == 1
    out = capsys.readouterr()
    s = json.loads(out.out)
    assert s["n"] == 1 and s["problems"]["count"] == 5
    assert f"{pred}:2: field 'response': an empty explanation" in out.err
    assert f"{pred}:3: field 'id': id 'nobody' is not in the gold set" in out.err
    assert f"{pred}:4: field 'id': duplicate id" in out.err
    assert s["reference_score"]["missing"] == "turned off (--no-reference-check)"
    assert [json.loads(line)["id"] for line in details.read_text().splitlines()] == [good["id"]]
    assert main(argv + ["--allow-errors"]) == 0
