"""Score-only vs generate (issue 17): protocol names in rows and summaries, `--mode compare`, and
generation stopped at the answer tag, all on the tiny Qwen2.5-VL made to write known replies
(backends/scripted.py) through the real HF backend."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import TEST_MAX_PIXELS
from PIL import Image
from scipy.stats import spearmanr
from sklearn.metrics import confusion_matrix

from deepfakejudge.backends.base import ChatRequest, GenerationConfig, LoadOptions, PixelBudget
from deepfakejudge.backends.scripted import script_model
from deepfakejudge.backends.stopping import answer_complete
from deepfakejudge.cli import main
from deepfakejudge.judge.protocol import protocol
from deepfakejudge.parsing import find_score
from deepfakejudge.prompts import SCORE_PREFIX, default_template

SMALL = ["--max-pixels", str(TEST_MAX_PIXELS), "--device", "cpu"]


@pytest.fixture(scope="module")
def scripted_backend(tiny_model_dir):
    """A second tiny backend: the session one stays unscripted. Plain greedy decoding, so the
    probabilities read are the scripted ones (the checkpoint's repetition penalty would shift them)."""
    from deepfakejudge.backends.hf import HFBackend

    backend = HFBackend(LoadOptions(model=str(tiny_model_dir), device="cpu", decoding="greedy",
                                    budget=PixelBudget(min_pixels=3136, max_pixels=TEST_MAX_PIXELS)))
    yield backend
    backend.close()


@pytest.fixture
def scripted(scripted_backend):
    """`scripted(reply, dist)`: the module's backend, following that script until the test ends."""
    undo = []
    options = scripted_backend.options

    def script(reply, dist=None):
        undo.append(script_model(scripted_backend, reply, dist))
        return scripted_backend

    yield script
    for u in reversed(undo):
        u()
    scripted_backend.options = options


@pytest.fixture
def backend_of(monkeypatch):
    """Make the CLI use a given backend object instead of loading one."""

    def use(backend):
        class Borrowed:  # the CLI closes its backend; the module fixture owns this one
            def __getattr__(self, name):
                return getattr(backend, name)

            def close(self):
                pass

        monkeypatch.setattr("deepfakejudge.cli.judge.backend_from_args", lambda args: Borrowed())
        monkeypatch.setattr("deepfakejudge.cli.detect.backend_from_args", lambda args: Borrowed())

    return use


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def item_of(prompt: str) -> int:
    return int(re.search(r"item-(\d)", prompt).group(1))


def peaked(best: str, choices, top: float = 0.6) -> dict[str, float]:
    rest = (1.0 - top) / (len(choices) - 1)
    return {c: top if c == best else rest for c in choices}


@pytest.fixture
def dataset(tmp_path):
    Image.new("RGB", (64, 48), (200, 40, 40)).save(tmp_path / "a.png")
    Image.new("RGB", (48, 64), (20, 140, 40)).save(tmp_path / "b.png")
    lines = [
        {"id": f"s{i}", "image": "a.png" if i % 2 else "b.png", "label": "fake",
         # Longest first: generate mode regroups by prompt length, rows must still come in input order.
         "response": f"item-{i} " + "evidence " * (3 * (3 - i)),
         "response_a": f"item-{i} first", "response_b": f"item-{i} second"}
        for i in range(4)
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


# -- protocol names -----------------------------------------------------------------------------


def test_protocol_names():
    pointwise, pairwise, detect = (default_template(k).text for k in ("pointwise", "pairwise", "detect"))
    assert protocol("pointwise", "generate", pointwise, SCORE_PREFIX["pointwise"]) == "generate"
    assert protocol("pointwise", "score-only", pointwise, SCORE_PREFIX["pointwise"]) == "score-only-no-reasoning"
    assert protocol("detect", "score-only", detect, SCORE_PREFIX["detect"]) == "score-only-no-reasoning"
    # The answer-only pairwise format: the first answer token is the first token written.
    assert protocol("pairwise", "score-only", pairwise, SCORE_PREFIX["pairwise"]) == "score-only-exact"
    # A pairwise prompt that asks for reasoning first is not exact any more.
    assert protocol("pairwise", "score-only", pairwise + "\n<reasoning>why</reasoning>",
                    SCORE_PREFIX["pairwise"]) == "score-only-no-reasoning"
    with pytest.raises(ValueError, match="mode"):
        protocol("pointwise", "fast", pointwise, "")


def test_rows_and_summary_name_the_protocol(tiny_model_dir, dataset, tmp_path, capsys):
    out = tmp_path / "pw.jsonl"
    assert main(["judge", "pointwise", "--model", str(tiny_model_dir), "--data", str(dataset), "--out", str(out),
                 "--mode", "score-only", "--limit", "2", *SMALL]) == 0
    assert "score-only-no-reasoning" in capsys.readouterr().out
    assert {r["protocol"] for r in rows(out)} == {"score-only-no-reasoning"}
    summary = json.loads(out.with_name("pw.summary.json").read_text())
    assert summary["protocol"]["name"] == "score-only-no-reasoning" and summary["protocol"]["exact"] is False
    out = tmp_path / "pa.jsonl"
    assert main(["judge", "pairwise", "--model", str(tiny_model_dir), "--data", str(dataset), "--out", str(out),
                 "--mode", "score-only", "--limit", "2", *SMALL]) == 0
    assert {r["protocol"] for r in rows(out)} == {"score-only-exact"}
    summary = json.loads(out.with_name("pa.summary.json").read_text())
    assert summary["protocol"] == {"name": "score-only-exact", "exact": True, "meaning": summary["protocol"]["meaning"]}


# -- stopping at the answer tag -----------------------------------------------------------------


@pytest.mark.parametrize("text, done", [
    ("<reasoning>fine</reasoning>\n<score>3</score>", True),
    ("<reasoning>fine</reasoning>\n<score>3</score", False),  # tag not closed yet
    ("<reasoning>it wrote <score>5</score>", False),  # inside a reasoning still open
    ("<reasoning>it wrote <score>5</score></reasoning>", False),  # inside a closed one
    ("<score>7</score>", False),  # not a valid score
    ("<reasoning>x</reasoning> <answer>Fake</answer>", True),
])
def test_answer_complete(text, done):
    kind = "prediction" if "answer" in text else "score"
    assert answer_complete(kind, text) is done


REPLIES = {
    0: "<reasoning> fine</reasoning>\n<score>3</score> and then it writes more",
    1: "<reasoning>" + " much longer reasoning" * 4 + "</reasoning>\n<score>4</score> trailing",
    # A candidate's tag quoted inside the reasoning is not the answer: no stop there.
    2: "<reasoning> it says <score>5</score> but no</reasoning>\n<score>2</score> more text",
}


def score_dist(prompt: str, said: str):
    if said.endswith("<score>") and "<reasoning></reasoning>" not in said:
        written = REPLIES[item_of(prompt)]
        value = find_score(written).value
        if said == written[: written.index("<score>" + value) + len("<score>")]:
            return peaked(value, "12345")
    return None


@pytest.mark.parametrize("decoding", ["checkpoint", "greedy", "sampled"])
def test_stop_at_tag_equals_plain_generate_up_to_the_tag(scripted, decoding):
    # Sampled, a spread-out score distribution could leave the script: only the reply is scripted.
    backend = scripted(lambda prompt: REPLIES[item_of(prompt)],
                       score_dist if decoding != "sampled" else None)
    if decoding != "sampled":
        backend.options = replace(backend.options, decoding=decoding)
    img = Image.new("RGB", (56, 56), (9, 9, 9))
    requests = [ChatRequest(text=f"judge item-{i}", image=img, image_key="k") for i in REPLIES]
    config = GenerationConfig(max_new_tokens=100, temperature=0.7 if decoding == "sampled" else 0.0)
    full = backend.generate(requests, config)
    stopped = backend.generate(requests, replace(config, stop_at_answer="score"))
    tok = backend.processor.tokenizer
    for i, (f, s) in enumerate(zip(full, stopped)):
        end = REPLIES[i].index("</score>", REPLIES[i].index("</reasoning>")) + len("</score>")
        assert f.text.startswith(REPLIES[i]) and f.finish_reason == "length"
        assert s.text == REPLIES[i][:end]
        assert s.finish_reason == "stop"
        assert s.completion_tokens == len(tok.encode(REPLIES[i][:end], add_special_tokens=False))
        assert find_score(s.text).value == find_score(f.text).value
        # Same tokens and the same log-probs at every step up to the tag.
        assert [st.token for st in s.steps] == [st.token for st in f.steps[: len(s.steps)]]
        for a, b in zip(s.steps, f.steps):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-5)
    if decoding == "sampled":
        return
    # The probabilities at the score token are the scripted ones.
    step = next(st for st in stopped[0].steps if st.token in "12345")
    assert dict(step.top)["3"] == pytest.approx(math.log(0.6), abs=1e-4)


# -- --mode compare -------------------------------------------------------------------------------

GENERATE_SCORES = {0: 3, 1: 4, 2: 2, 3: 5}
SCORE_ONLY_SCORES = {0: 5, 1: 4, 2: 3, 3: 5}


def pointwise_reply(prompt: str) -> str:
    return f"<reasoning> checked</reasoning>\n<score>{GENERATE_SCORES[item_of(prompt)]}</score><|im_end|>"


def pointwise_dist(prompt: str, said: str):
    i = item_of(prompt)
    if said == "<reasoning></reasoning>\n<score>":  # score-only: after an empty reasoning
        return peaked(str(SCORE_ONLY_SCORES[i]), "12345", 0.5)
    if said == "<reasoning> checked</reasoning>\n<score>":
        return peaked(str(GENERATE_SCORES[i]), "12345", 0.7)
    return None


def expected(best: int, top: float) -> float:
    dist = peaked(str(best), "12345", top)
    return sum(int(k) * p for k, p in dist.items())


def test_compare_pointwise_reports_known_disagreement(scripted, backend_of, dataset, tmp_path, capsys):
    backend_of(scripted(pointwise_reply, pointwise_dist))
    out = tmp_path / "cmp.jsonl"
    assert main(["judge", "pointwise", "--model", "scripted", "--data", str(dataset), "--out", str(out),
                 "--mode", "compare", "--batch-size", "2", *SMALL]) == 0
    printed = capsys.readouterr().out
    assert [r["id"] for r in rows(out)] == ["s0", "s1", "s2", "s3"]
    got = {r["id"]: r for r in rows(out)}
    assert [got[f"s{i}"]["score"] for i in range(4)] == [GENERATE_SCORES[i] for i in range(4)]
    assert [got[f"s{i}"]["score_only"]["score"] for i in range(4)] == [SCORE_ONLY_SCORES[i] for i in range(4)]
    assert {r["protocol"] for r in got.values()} == {"generate"}
    assert {r["score_only"]["protocol"] for r in got.values()} == {"score-only-no-reasoning"}
    assert got["s0"]["raw"] == "<reasoning> checked</reasoning>\n<score>3</score>"
    assert got["s0"]["score_only"]["raw"] is None

    summary = json.loads(out.with_name("cmp.summary.json").read_text())
    assert summary["protocol"]["name"] == "compare"
    assert summary["protocol"]["score_only"]["exact"] is False
    a = summary["agreement"]
    g = [GENERATE_SCORES[i] for i in range(4)]
    s = [SCORE_ONLY_SCORES[i] for i in range(4)]
    assert a["both_answered"] == 4 and a["unanswered"] == {"generate": 0, "score_only": 0}
    assert a["agreement"] == pytest.approx(sum(x == y for x, y in zip(g, s)) / 4)
    assert a["score"]["mean_abs_diff"] == pytest.approx(sum(abs(x - y) for x, y in zip(g, s)) / 4)
    assert a["score"]["spearman"] == pytest.approx(spearmanr(g, s).statistic, abs=1e-4)
    assert a["confusion"]["matrix"] == confusion_matrix(g, s, labels=[1, 2, 3, 4, 5]).tolist()
    eg = [expected(x, 0.7) for x in g]
    es = [expected(x, 0.5) for x in s]
    assert a["probability"]["mean_abs_diff"] == pytest.approx(sum(abs(x - y) for x, y in zip(eg, es)) / 4, abs=1e-4)
    assert a["probability"]["spearman"] == pytest.approx(spearmanr(eg, es).statistic, abs=1e-4)
    assert "same score on 50.0%" in printed


def pairwise_reply(prompt: str) -> str:
    return "<answer>A</answer><|im_end|>" if item_of(prompt) % 2 else "<answer>B</answer><|im_end|>"


def pairwise_dist(prompt: str, said: str):
    # Generate writes "<answer" then ">A"; score-only's "<answer>" prefix heals to the same context.
    if said == "<answer":
        p_a = 0.8 if item_of(prompt) % 2 else 0.35
        return {">A": p_a, ">B": 1 - p_a}
    return None


def test_compare_pairwise_is_exact(scripted, backend_of, dataset, tmp_path):
    backend_of(scripted(pairwise_reply, pairwise_dist))
    out = tmp_path / "cmp.jsonl"
    assert main(["judge", "pairwise", "--model", "scripted", "--data", str(dataset), "--out", str(out),
                 "--mode", "compare", "--one-order", *SMALL]) == 0
    got = rows(out)
    assert [r["choice"] for r in got] == ["B", "A", "B", "A"]
    assert [r["score_only"]["choice"] for r in got] == ["B", "A", "B", "A"]
    assert {r["score_only"]["protocol"] for r in got} == {"score-only-exact"}
    a = json.loads(out.with_name("cmp.summary.json").read_text())["agreement"]
    assert a["agreement"] == 1.0 and a["confusion"]["matrix"] == [[2, 0], [0, 2]]
    # The same distribution is read both ways: the fast path is the generate path's decision.
    assert a["probability"]["mean_abs_diff"] == pytest.approx(0.0, abs=1e-6)


def detect_reply(prompt: str) -> str:
    return "<reasoning> the skin is smooth</reasoning> <answer>fake</answer><|im_end|>"


def detect_dist(prompt: str, said: str):
    if said == "<reasoning> the skin is smooth</reasoning> <answer":
        return {">fake": 0.9, ">real": 0.1}
    if said == "<reasoning></reasoning> <answer":  # without reasoning: unsure, leaning real
        return {">fake": 0.4, ">real": 0.6}
    return None


def test_compare_detect_reports_verdict_agreement(scripted, backend_of, dataset, tmp_path, capsys):
    backend_of(scripted(detect_reply, detect_dist))
    out = tmp_path / "det.jsonl"
    assert main(["detect", "run", "--model", "scripted", "--data", str(dataset), "--out", str(out),
                 "--mode", "compare", "--limit", "3", *SMALL]) == 0
    assert "same verdict on 0.0%" in capsys.readouterr().out
    got = rows(out)
    assert [r["prediction"] for r in got] == ["fake"] * 3
    assert [r["score_only"]["prediction"] for r in got] == ["real"] * 3
    summary = json.loads(out.with_name("det.summary.json").read_text())
    a = summary["agreement"]
    assert a["agreement"] == 0.0 and a["confusion"]["matrix"] == [[0, 0], [3, 0]]
    assert a["probability"]["field"] == "p_fake"
    assert a["probability"]["mean_abs_diff"] == pytest.approx(0.5, abs=1e-4)
    assert summary["predicted"] == {"real": 0, "fake": 3}  # the generate side's figures


def test_length_sorted_pools_keep_input_order_and_error_rows(monkeypatch):
    import deepfakejudge.judge.common as common
    from deepfakejudge.records import RowError, Sample

    def fake_prepare_all(samples, required, max_image_pixels):  # no image files needed here
        return [RowError("f:3", "image", "missing", id="s2") if s.id == "s2" else common.Prepared(s, None)
                for s in samples]

    monkeypatch.setattr(common, "prepare_all", fake_prepare_all)
    calls = []

    def call(items):
        calls.append([p.sample.id for p in items])
        return [p.sample.id for p in items]

    samples = [Sample(id=f"s{i}", image=Path("x.png"), label="fake", response="x" * (10 - i)) for i in range(5)]
    out = [r for batch in common.judge_batches(samples, 2, ("response",), 10, call,
                                               length=lambda p: len(p.sample.response)) for r in batch]
    assert [r if isinstance(r, str) else r.id for r in out] == ["s0", "s1", "s2", "s3", "s4"]
    assert isinstance(out[2], RowError)
    assert calls == [["s4", "s3"], ["s1", "s0"]]  # shortest prompts first, two per batch


# -- generate mode, end to end ------------------------------------------------------------------


def test_generate_mode_parses_the_written_tag_and_reads_probs_at_the_score_token(
        scripted, backend_of, dataset, tmp_path, capsys):
    """The generate path end to end on a model that writes its tags (a random one rarely does):
    the score is parsed from the text written, and `probs` are the model's distribution at the
    score token."""
    backend_of(scripted(pointwise_reply, pointwise_dist))
    out = tmp_path / "gen.jsonl"
    assert main(["judge", "pointwise", "--model", "scripted", "--data", str(dataset), "--out", str(out),
                 "--mode", "generate", "--batch-size", "2", "--json", *SMALL]) == 0
    summary = json.loads(capsys.readouterr().out)
    got = {r["id"]: r for r in rows(out)}
    assert summary["judged"] == 4 and summary["unparsable"] == 0
    for i in range(4):
        r, best = got[f"s{i}"], GENERATE_SCORES[i]
        assert r["raw"] == f"<reasoning> checked</reasoning>\n<score>{best}</score>"
        assert r["score"] == best and r["protocol"] == "generate"
        want = peaked(str(best), "12345", 0.7)
        assert r["probs"] == pytest.approx(want, abs=1e-4)
        assert r["expected_score"] == pytest.approx(expected(best, 0.7), abs=1e-4)


def test_generate_mode_pairwise_reads_the_answer_in_both_orders(scripted, backend_of, dataset, tmp_path):
    # The script answers by item, whatever the order: odd items "A" at p 0.8, even "B" (p_a 0.35).
    backend_of(scripted(pairwise_reply, pairwise_dist))
    out = tmp_path / "gen.jsonl"
    assert main(["judge", "pairwise", "--model", "scripted", "--data", str(dataset), "--out", str(out),
                 "--mode", "generate", *SMALL]) == 0
    for r in rows(out):
        odd = int(r["id"][1]) % 2
        first, second = r["orders"]
        assert (first["choice"], second["choice"]) == (("A", "A") if odd else ("B", "B"))
        assert first["raw"] == second["raw"] == ("<answer>A</answer>" if odd else "<answer>B</answer>")
        p = 0.8 if odd else 0.35
        assert (first["p_a"], second["p_a"]) == (pytest.approx(p, abs=1e-4), pytest.approx(p, abs=1e-4))
        # The same letter in both orders names different explanations: no agreement, p_a 0.5.
        assert r["agree"] is False and r["p_a"] == pytest.approx(0.5, abs=1e-4)
