"""Judge logic on a scripted backend: where the probabilities are read, how orders combine, how
failures are isolated. (The real model path is covered in test_judge_tiny.py.)"""

import math

import pytest
from PIL import Image

from deepfakejudge import PairwiseJudge, PointwiseJudge
from deepfakejudge.backends import Backend, BackendError, Capabilities, Generation, TokenStep
from deepfakejudge.judge import combine
from deepfakejudge.judge.common import distribution_at
from deepfakejudge.records import PairwiseOrder, Sample


def steps_for(pieces, tops):
    """TokenSteps for text split into `pieces`; `tops[i]` gives the alternatives at step i."""
    out, offset = [], 0
    for i, piece in enumerate(pieces):
        top = tuple(tops.get(i, {piece: 0.0}).items())
        out.append(TokenStep(offset=offset, token=piece, logprob=dict(top).get(piece, 0.0), top=top))
        offset += len(piece)
    return tuple(out)


class Scripted(Backend):
    name = "scripted"
    capabilities = Capabilities(logprobs=True, choice_probs=True)

    def __init__(self, outputs=(), probs=(), fail_when=None):
        self.outputs, self.probs, self.fail_when = list(outputs), list(probs), fail_when
        self.calls = []

    def generate(self, requests, config):
        self.calls.append([r.text for r in requests])
        if self.fail_when and any(self.fail_when in r.text for r in requests):
            raise BackendError("simulated out of memory")
        return [self.outputs.pop(0) for _ in requests]

    def choice_probs(self, requests, choices):
        self.calls.append([r.prefix for r in requests])
        return [self.probs.pop(0) for _ in requests]

    def describe(self):
        return {"model": "scripted"}


@pytest.fixture
def samples(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    mk = lambda i, **kw: Sample(id=f"s{i}", image=tmp_path / "x.png", label="fake", where=f"d.jsonl:{i}", **kw)
    return mk


def test_distribution_read_at_a_merged_token():
    # The tokenizer wrote ">A" as one token: alternatives are looked up as ">B".
    text = "<answer>A</answer>"
    pieces = ["<answer", ">A", "</answer>"]
    gen = Generation(text, steps_for(pieces, {1: {">A": math.log(0.6), ">B": math.log(0.2), ">C": math.log(0.1)}}))
    dist, mass = distribution_at(gen, 8, 9, ("A", "B"))
    assert dist == pytest.approx({"A": 0.75, "B": 0.25}) and mass == pytest.approx(0.8)


def test_distribution_is_none_without_logprobs_or_when_split():
    assert distribution_at(Generation("<score>4</score>"), 7, 8, "12345") is None
    gen = Generation("<answer>real</answer>", steps_for(["<answer>", "re", "al", "</answer>"], {}))
    assert distribution_at(gen, 8, 12, ("real", "fake")) is None


def test_pointwise_generate_reads_probs_at_the_final_score(samples):
    # The reasoning quotes a "5" token; the score position is the last <score> tag.
    text = "<reasoning>it said <score>5</score></reasoning>\n<score>2</score>"
    pieces = ["<reasoning>it said <score>", "5", "</score></reasoning>\n<score>", "2", "</score>"]
    probs = {"1": 0.1, "2": 0.5, "3": 0.2, "4": 0.05, "5": 0.05}
    gen = Generation(text, steps_for(pieces, {1: {"5": 0.0}, 3: {k: math.log(v) for k, v in probs.items()}}))
    judge = PointwiseJudge(Scripted([gen]))
    (v,) = judge.score([samples(0, response="r")])
    assert v.score == 2 and v.reasoning == "it said <score>5</score>"
    assert v.probs == pytest.approx((0.1 / 0.9, 0.5 / 0.9, 0.2 / 0.9, 0.05 / 0.9, 0.05 / 0.9))
    assert v.expected_score == pytest.approx(sum((k + 1) * p for k, p in enumerate(v.probs)))
    assert v.choice_mass == pytest.approx(0.9)


def test_pointwise_unparsable_is_none_never_invented(samples):
    judge = PointwiseJudge(Scripted([Generation("<reasoning>fine</reasoning> I'd say 4/5")]))
    (v,) = judge.score([samples(0, response="r")])
    assert (v.score, v.probs, v.expected_score) == (None, None, None)
    assert v.raw.endswith("4/5")


def test_pointwise_score_only_uses_the_prefix(samples):
    backend = Scripted(probs=[{"1": 0.0, "2": 0.1, "3": 0.1, "4": 0.3, "5": 0.1}])
    (v,) = PointwiseJudge(backend, mode="score-only").score([samples(0, response="r")])
    assert backend.calls == [["<reasoning></reasoning>\n<score>"]]
    assert v.score == 4 and v.expected_score == pytest.approx((0.2 + 0.3 + 1.2 + 0.5) / 0.6)
    assert v.raw is None and v.choice_mass == pytest.approx(0.6)


def test_failures_are_isolated_per_item(samples):
    good = lambda s: Generation(f"<reasoning>x</reasoning><score>{s}</score>")
    backend = Scripted([good(3), good(4)], fail_when="POISON")
    items = [samples(0, response="fine"), samples(1, response="POISON"), samples(2, response="fine"),
             samples(3, response="  ")]
    out = PointwiseJudge(backend).score(items, batch_size=8)
    assert [type(r).__name__ for r in out] == ["PointwiseVerdict", "RowError", "PointwiseVerdict", "RowError"]
    assert out[0].score == 3 and out[2].score == 4
    assert out[1].field == "<model>" and "simulated out of memory" in out[1].message
    assert out[3].field == "response" and "empty" in out[3].message
    assert len(backend.calls) == 4  # the batch of 3, then each of the 3 alone


@pytest.mark.parametrize(
    "o1,o2,expected",
    [
        # (choice, p_a) of the first pass (A,B) and the swapped pass (B,A)
        (("A", 0.8), ("B", 0.3), ("A", 0.75, True)),
        (("A", 0.6), ("A", 0.9), ("B", 0.35, False)),  # position bias toward A: debiased to B
        (("A", None), ("B", None), ("A", None, True)),
        (("A", None), ("A", None), (None, None, False)),
        ((None, None), ("B", None), (None, None, False)),
        (("A", 0.5), ("B", 0.5), (None, 0.5, True)),
    ],
)
def test_combine_orders(o1, o2, expected):
    orders = (PairwiseOrder(False, o1[0], o1[1], None), PairwiseOrder(True, o2[0], o2[1], None))
    v = combine("x", orders)
    assert (v.choice, None if v.p_a is None else round(v.p_a, 6), v.agree) == expected


def test_pairwise_both_orders_swaps_the_responses(samples):
    backend = Scripted(probs=[{"A": 0.7, "B": 0.1}, {"A": 0.2, "B": 0.6}])
    (v,) = PairwiseJudge(backend, mode="score-only").compare([samples(0, response_a="FIRST", response_b="SECOND")])
    assert v.choice == "A" and v.agree is True
    assert v.p_a == pytest.approx((0.7 / 0.8 + 0.6 / 0.8) / 2)
    assert [o.swapped for o in v.orders] == [False, True]


def test_pairwise_one_order_and_prompt_positions(samples):
    backend = Scripted([Generation("<answer>B</answer>")])
    (v,) = PairwiseJudge(backend).compare([samples(0, response_a="FIRST", response_b="SECOND")], both_orders=False)
    (prompt,) = backend.calls[0]
    assert prompt.index("FIRST") < prompt.index("SECOND")
    assert (v.choice, v.agree, len(v.orders)) == ("B", None, 1)


def test_wrong_template_kind_is_refused():
    from deepfakejudge.prompts import default_template

    with pytest.raises(ValueError, match="needs a pointwise template"):
        PointwiseJudge(Scripted(), template=default_template("pairwise"))
    with pytest.raises(ValueError, match="mode must be one of"):
        PointwiseJudge(Scripted(), mode="fast")


def test_pairwise_counts_tell_disagreeing_orders_from_unreadable_answers():
    from deepfakejudge.judge.runner import judge_counts

    def row(choice, *orders):
        return {"choice": choice, "agree": None if len(orders) < 2 else orders[0] == orders[1] and None not in orders,
                "orders": [{"choice": c} for c in orders]}

    rows = [
        row("A", "A", "B"),      # orders agree once swapped back: decided
        row(None, "A", "A"),     # both answered, they contradict each other: undecided
        row(None, "A", None),    # the second order wrote no readable answer: unparsable
        row(None, None),         # one order, unreadable: unparsable
        row("B", "B"),
    ]
    counts = judge_counts("pairwise", rows)
    assert (counts["unparsable"], counts["undecided"], counts["prefer_a"]) == (2, 1, 0.5)
