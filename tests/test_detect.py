"""DFJ-Detect: the detector on any backend, prediction files of other detectors, scoring by hand."""

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from deepfakejudge.backends.base import Backend, Capabilities, Generation, TokenStep
from deepfakejudge.cli import main
from deepfakejudge.detect import Detector, read_predictions, resolve_gold, score_predictions
from deepfakejudge.prompts import default_template, load_template
from deepfakejudge.records import Sample

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# -- prompt ---------------------------------------------------------------------------------------


def test_detect_template_has_no_placeholders_and_asks_for_the_contract(tmp_path):
    t = default_template("detect")
    assert t.fill() == t.text  # nothing to fill: the detector sees only the image
    assert "<reasoning>" in t.text and "<answer>real or fake</answer>" in t.text
    own = tmp_path / "d.txt"
    own.write_text("Real or fake? {not_a_placeholder}")
    assert load_template(own, "detect").fill() == "Real or fake? {not_a_placeholder}"
    with pytest.raises(ValueError, match="unexpected"):
        t.fill(candidate_response="x")


# -- detector on a scripted backend ----------------------------------------------------------------


class Scripted(Backend):
    """Returns fixed generations / probabilities, to check what the detector reads from them."""

    name = "scripted"

    def __init__(self, generations=(), probs=None, raise_value_error=False):
        self.generations = list(generations)
        self.probs = probs
        self.raise_value_error = raise_value_error
        self.capabilities = Capabilities(logprobs=True, choice_probs=probs is not None or raise_value_error)
        self.requests = []

    def generate(self, requests, config):
        self.requests += list(requests)
        return [self.generations.pop(0) for _ in requests]

    def choice_probs(self, requests, choices):
        if self.raise_value_error:
            raise ValueError("choices: ['real', 'fake'] are not single tokens after the prefix")
        assert tuple(choices) == ("real", "fake")
        return [dict(self.probs) for _ in requests]

    def describe(self):
        return {"backend": self.name}


def _answer_generation(top):
    """'<reasoning>x</reasoning> <answer>' then one token '>fake'-style at the answer."""
    text = "<reasoning>Warped text.</reasoning> <answer>fake</answer>"
    start = text.index("fake")
    steps = (
        TokenStep(0, text[: start - 1], math.log(0.9)),
        TokenStep(start - 1, ">fake", math.log(top[">fake"]), tuple((k, math.log(v)) for k, v in top.items())),
        TokenStep(start + 4, text[start + 4 :], math.log(0.9)),
    )
    return Generation(text=text, steps=steps)


@pytest.fixture
def samples(tmp_path):
    Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "a.png")
    return [Sample(id=f"s{i}", image=tmp_path / "a.png", label="edited") for i in range(2)]


def test_generate_reads_p_fake_over_every_spelling_at_the_answer_token(samples):
    # p(fake-spellings) = 0.5 + 0.1 (">Edited") ; p(real-spellings) = 0.2 + 0.05 ; ">maybe" is not an answer.
    top = {">fake": 0.5, ">real": 0.2, ">Edited": 0.1, ">Real": 0.05, ">maybe": 0.15}
    no_logprobs = Generation(text="<reasoning>r</reasoning> <answer>REAL</answer>")
    backend = Scripted([_answer_generation(top), no_logprobs])
    out = Detector(backend).detect(samples)
    assert out[0].prediction == "fake" and out[0].response.endswith("<answer>fake</answer>")
    assert out[0].p_fake == pytest.approx(0.6 / 0.85) and out[0].choice_mass == pytest.approx(0.85)
    assert out[1].prediction == "real" and out[1].p_fake is None and out[1].choice_mass is None  # never invented
    assert backend.requests[0].prefix == "" and backend.requests[0].text == default_template("detect").text


def test_generate_unparsable_answer_has_no_prediction_and_no_p_fake(samples):
    backend = Scripted([Generation(text="It is fake."), Generation(text="<answer>deepfake</answer>")])
    out = Detector(backend).detect(samples)
    assert [(v.prediction, v.p_fake) for v in out] == [(None, None), (None, None)]


def test_score_only_reads_real_fake_probabilities(samples):
    backend = Scripted(probs={"real": 0.03, "fake": 0.01})
    out = Detector(backend, mode="score-only").detect(samples)
    assert out[0].prediction == "real" and out[0].p_fake == pytest.approx(0.25)
    assert out[0].choice_mass == pytest.approx(0.04) and out[0].response is None


def test_score_only_with_a_tokenizer_that_splits_the_answers_says_so(samples):
    with pytest.raises(ValueError, match="--mode score-only.*use --mode generate"):
        Detector(Scripted(raise_value_error=True), mode="score-only").detect(samples)
    with pytest.raises(ValueError, match="cannot read next-token probabilities"):
        Detector(Scripted(), mode="score-only")


def test_detector_on_the_tiny_model(tiny_backend, samples):
    from deepfakejudge.backends.base import GenerationConfig

    gen = Detector(tiny_backend, generation=GenerationConfig(max_new_tokens=12)).detect(samples)
    for v in gen:
        assert v.response is not None
        assert (v.p_fake is None) or (v.prediction is not None and 0 <= v.p_fake <= 1)
    so = Detector(tiny_backend, mode="score-only").detect(samples)
    for v in so:
        assert 0 <= v.p_fake <= 1 and v.prediction == ("fake" if v.p_fake > 0.5 else "real") and v.choice_mass > 0


# -- scoring, by hand -----------------------------------------------------------------------------

GOLD = [
    {"id": "r1", "image": "x.png", "label": "real", "source": "cam"},
    {"id": "r2", "image": "x.png", "label": "real", "source": "cam"},
    {"id": "r3", "image": "x.png", "label": "real", "source": "phone"},
    {"id": "f1", "image": "x.png", "label": "fake", "source": "sd"},
    {"id": "f2", "image": "x.png", "label": "fake", "source": "sd"},
    {"id": "e1", "image": "x.png", "label": "edited", "source": "splice"},
    {"id": "e2", "image": "x.png", "label": "edited", "source": "splice"},
]
PRED = [
    {"id": "r1", "prediction": "real", "p_fake": 0.1},
    {"id": "r2", "prediction": "fake", "p_fake": 0.8},
    {"id": "r3", "prediction": None, "p_fake": 0.4, "response": "I cannot tell."},
    {"id": "f1", "prediction": "FAKE", "p_fake": 0.9},
    {"id": "f2", "prediction": "real", "p_fake": 0.3},
    {"id": "e1", "response": "<reasoning>seam</reasoning> <answer>edited</answer>", "p_fake": 0.7},  # parsed: fake
    {"id": "e2", "prediction": None},
]


def check_hand_computed(s):
    # confusion: gold real -> (real 1, fake 1, none 1); gold fake -> (real 1, fake 2, none 1)
    assert s["n"] == 7 and s["unparsable"] == 2 and s["unparsable_rate"] == pytest.approx(2 / 7)
    assert s["confusion"] == {"real": {"real": 1, "fake": 1, "none": 1}, "fake": {"real": 1, "fake": 2, "none": 1}}
    assert s["accuracy"] == pytest.approx(3 / 7)
    assert s["real_f1"] == pytest.approx(2 / 5)  # TP 1, FP 1, FN 2 (the unparsable one included)
    assert s["fake_f1"] == pytest.approx(4 / 7)  # TP 2, FP 1, FN 2
    assert s["macro_f1"] == pytest.approx(17 / 35)
    assert s["by_kind"]["real"]["accuracy"] == pytest.approx(1 / 3)
    assert s["by_kind"]["t2i"]["accuracy"] == pytest.approx(1 / 2) and s["by_kind"]["edited"]["n"] == 2
    assert s["by_source"]["splice"]["unparsable"] == 1 and s["by_source"]["cam"]["accuracy"] == pytest.approx(0.5)
    p = s["probability"]  # over the 6 rows with p_fake: fakes .9 .3 .7 vs reals .1 .8 .4
    assert p["n"] == 6 and p["n_missing"] == 1
    assert p["roc_auc"] == pytest.approx(6 / 9)
    assert p["brier"] == pytest.approx((0.01 + 0.64 + 0.16 + 0.01 + 0.49 + 0.09) / 6)
    ci = s["ci"]["accuracy"]
    assert ci["low"] <= s["accuracy"] <= ci["high"] and ci["n_resamples"] == 200


def test_score_cli_hand_computed(tmp_path, capsys):
    gold = write_jsonl(tmp_path / "gold.jsonl", GOLD)
    pred = write_jsonl(tmp_path / "pred.jsonl", PRED)
    assert main(["detect", "score", "--pred", str(pred), "--data", str(gold), "--json", "--n-resamples", "200"]) == 0
    check_hand_computed(json.loads(capsys.readouterr().out))
    # The markdown report shows the same figures (in %).
    assert main(["detect", "score", "--pred", str(pred), "--data", str(gold), "--n-resamples", "200"]) == 0
    table = capsys.readouterr().out
    assert "| all | 7 | 40.0 [" in table and "| 2 (28.6%) |" in table and "| 0.667 [" in table


def test_score_reports_both_unparsable_policies(tmp_path, capsys):
    gold = write_jsonl(tmp_path / "gold.jsonl", GOLD)
    pred = write_jsonl(tmp_path / "pred.jsonl", PRED)
    argv = ["detect", "score", "--pred", str(pred), "--data", str(gold), "--n-resamples", "200"]
    assert main(argv + ["--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["policy"] == "unparsable-as-miss" and list(s["policies"]) == ["unparsable-as-miss", "parsed-only"]
    miss, parsed = s["policies"]["unparsable-as-miss"], s["policies"]["parsed-only"]
    assert (miss["real_f1"], miss["fake_f1"]) == pytest.approx((2 / 5, 4 / 7))  # as the headline
    # parsed-only, 5 parsed rows: real TP 1, FP 1, FN 1 -> 2/4; fake TP 2, FP 1, FN 1 -> 4/6
    assert (parsed["real_f1"], parsed["fake_f1"], parsed["macro_f1"]) == pytest.approx((1 / 2, 2 / 3, 7 / 12))
    assert parsed["accuracy"] == miss["accuracy"] == pytest.approx(3 / 7)  # over all 7 items
    assert parsed["unparsable"] == miss["unparsable"] == 2
    ci = parsed["ci"]["real_f1"]
    assert ci["low"] <= 0.5 <= ci["high"] and ci["n_resamples"] == 200
    # per group too: splice holds e1 (fake, right) and e2 (unparsable): parsed-only Fake F1 is 1
    assert s["by_source"]["splice"]["parsed_only"]["fake_f1"] == 1.0
    assert s["by_source"]["splice"]["fake_f1"] == pytest.approx(2 / 3)
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "| unparsable-as-miss (headline) | 40.0 [" in table and "| parsed-only | 50.0 [" in table
    assert "(2 unparsable of 7)" in table


def test_bad_prediction_rows_are_named_counted_and_the_rest_scored(tmp_path, capsys):
    gold = write_jsonl(tmp_path / "gold.jsonl", GOLD)
    bad = [
        {"id": "zz", "prediction": "real"},  # not in gold
        {"id": "r1", "prediction": "fake"},  # duplicate: the first row counts
        {"id": "x9", "prediction": "deepfake"},  # outside the vocabulary
        '{"id": "broken", ',  # malformed
        {"prediction": "real"},  # no id
    ]
    rows = PRED[:6] + [{"id": "e2", "prediction": None, "p_fake": 1.5}] + bad
    pred = write_jsonl(tmp_path / "pred.jsonl", rows)
    argv = ["detect", "score", "--pred", str(pred), "--data", str(gold), "--json", "--n-resamples", "200"]
    assert main(argv) == 1
    out = capsys.readouterr()
    s = json.loads(out.out)
    check_hand_computed(s)  # the valid rows, scored exactly as without the bad ones
    assert s["problems"]["count"] == 6
    fields = sorted((r["where"].rsplit(":", 1)[1], r["field"]) for r in s["problems"]["rows"])
    assert fields == [("10", "prediction"), ("11", "<row>"), ("12", "id"), ("7", "p_fake"), ("8", "id"), ("9", "id")]
    assert f"{pred}:7: field 'p_fake': 1.5 is outside [0, 1]" in out.err
    assert f"{pred}:8: field 'id': id 'zz' is not in the gold set" in out.err
    assert f"{pred}:10: field 'prediction': 'deepfake' is not a label" in out.err
    assert main(argv + ["--allow-errors"]) == 0


def test_missing_ids_are_reported_and_optionally_scored_as_misses(tmp_path, capsys):
    gold = write_jsonl(tmp_path / "gold.jsonl", GOLD + [{"id": "m1", "image": "x.png", "label": "real"}])
    pred = write_jsonl(tmp_path / "pred.jsonl", PRED)
    assert main(["detect", "score", "--pred", str(pred), "--data", str(gold), "--json", "--n-resamples", "50"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["n"] == 7 and s["missing"] == {"count": 1, "ids": ["m1"], "scored_as_unparsable": False}
    assert main(["detect", "score", "--pred", str(pred), "--data", str(gold), "--json", "--n-resamples", "50",
                 "--missing-as-unparsable"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["n"] == 8 and s["unparsable"] == 3 and s["accuracy"] == pytest.approx(3 / 8)


def test_labels_carried_by_the_rows_and_comparison_table(tmp_path, capsys):
    gold = {g["id"]: g for g in GOLD}
    own = write_jsonl(tmp_path / "cnn.jsonl", [dict(p, label=gold[p["id"]]["label"]) for p in PRED])
    perfect = write_jsonl(tmp_path / "oracle.jsonl", [
        {"id": g["id"], "prediction": "real" if g["label"] == "real" else "fake", "label": g["label"]} for g in GOLD])
    pf = read_predictions(own)
    s = score_predictions(pf, resolve_gold(pf, None), n_resamples=50)
    assert s.metrics.accuracy == pytest.approx(3 / 7) and s.gold == "labels in the prediction rows"
    csv_path = tmp_path / "cmp.csv"
    assert main(["detect", "compare", "--pred", str(own), "--pred", str(perfect), "--name", "CNN",
                 "--name", "Oracle", "--csv", str(csv_path), "--n-resamples", "50"]) == 0
    table = capsys.readouterr().out
    assert "| Model | n | Real F1 | Fake F1 | Overall Acc. |" in table
    assert "| CNN | 7 | 40.0 | 57.1 | 42.9 |" in table and "| Oracle | 7 | 100.0 | 100.0 | 100.0 |" in table
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("detector,n,real_f1,fake_f1,accuracy") and lines[2].startswith("Oracle,7,1.0,1.0,1.0")
    # the parsed-only F1s close each row: CNN real 1/2, fake 2/3 over its 5 parsed answers
    assert lines[0].endswith("parsed_only_real_f1,parsed_only_fake_f1,parsed_only_macro_f1")
    assert lines[1].endswith(",0.5,0.6666666666666666,0.5833333333333333")
    assert "| 50.0 | 66.7 |" in table.splitlines()[2]


def test_score_without_gold_says_how_to_fix_it(tmp_path, capsys):
    pred = write_jsonl(tmp_path / "pred.jsonl", PRED)
    assert main(["detect", "score", "--pred", str(pred)]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["detect", "score", "--pred", str(tmp_path / "none.jsonl")]) == 2
    assert "--pred" in capsys.readouterr().err


# -- end to end on examples/ with the tiny model ---------------------------------------------------

SMALL = ["--max-pixels", str(16 * 28 * 28), "--device", "cpu"]


def test_detect_run_then_score_on_examples(tiny_model_dir, tmp_path, capsys, sent_to_model):
    out = tmp_path / "det.jsonl"
    argv = ["detect", "run", "--model", str(tiny_model_dir), "--data", str(EXAMPLES / "detect.jsonl"),
            "--out", str(out), "--max-new-tokens", "8", "--json", *SMALL]
    assert main(argv) == 0
    # The detector's question, the same for every image (the template has no placeholders), as sent.
    assert [r.text for r in sent_to_model] == [default_template("detect").text] * 14
    summary = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [json.loads(line)["id"] for line in (EXAMPLES / "detect.jsonl").read_text().splitlines()]
    assert all(set(r) == {"id", "prediction", "p_fake", "response", "choice_mass", "protocol"} for r in rows)
    assert {r["protocol"] for r in rows} == {"generate"}
    assert summary["judged"] == 14 and summary["unparsable"] == sum(r["prediction"] is None for r in rows)
    side = json.loads((tmp_path / "det.summary.json").read_text())
    assert side["kind"] == "detect" and side["settings"]["template_sha256"] == default_template("detect").sha256
    assert main(argv) == 0 and json.loads(capsys.readouterr().out)["this_run"]["judged"] == 0  # resumed

    so = tmp_path / "so.jsonl"
    assert main(["detect", "run", "--model", str(tiny_model_dir), "--data", str(EXAMPLES / "detect.jsonl"),
                 "--out", str(so), "--mode", "score-only", "--batch-size", "7", *SMALL]) == 0
    capsys.readouterr()
    png = tmp_path / "so.png"
    # No --data: the gold set is the one named in the run's summary.
    assert main(["detect", "score", "--pred", str(so), "--json", "--n-resamples", "100", "--png", str(png)]) == 0
    s = json.loads(capsys.readouterr().out)
    so_rows = [json.loads(line) for line in so.read_text().splitlines()]
    fake_gold = {"astronaut_text", "camera_clone", "chelsea_relight", "coffee_smear", "hubble_duplicate",
                 "rocket_splice", "synth_landscape", "synth_spheres"}
    hits = sum((r["prediction"] == "fake") == (r["id"] in fake_gold) for r in so_rows)
    assert s["n"] == 14 and s["accuracy"] == pytest.approx(hits / 14) and s["unparsable"] == 0
    assert s["probability"]["n"] == 14 and set(s["by_kind"]) == {"real", "t2i", "edited"}
    assert len(s["by_source"]) == 14 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["detect", "score", "--pred", str(out), "--n-resamples", "100"]) == 0
    assert "| all | 14 |" in capsys.readouterr().out

    # ... and the same run's explanations through DFJ-Reason, every metric with an offline model.
    from deepfakejudge.reason import default_minilm_path

    assert main(["reason", "score", "--pred", str(out), "--gold", str(EXAMPLES / "detect.jsonl"),
                 "--bertscore-model", str(default_minilm_path()), "--judge", str(tiny_model_dir),
                 "--judge-mode", "score-only", "--json", *SMALL]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n"] == 14 and r["judge"] == str(tiny_model_dir)
    for key in ("bleu3", "bleu3_sentence", "bertscore_f1", "dfj_score", "reference_score"):
        assert r[key]["missing"] is None and r[key]["value"] is not None, key
    assert 1 <= r["dfj_score"]["value"] <= 5 and 1 <= r["reference_score"]["value"] <= 5
    assert [i["id"] for i in r["items"]] == [row["id"] for row in rows]
