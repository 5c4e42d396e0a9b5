"""`dfj bootstrap`'s state machine, outputs and report, driven by a scripted backend.

The scripted backend plays both roles from the prompt text alone: the generator writes
`IMG[id] lvl K round R` (so the evaluator can tell which unit it rates), the evaluator scores by
a policy of (image, level, round, paraphrase). It is a pure function of the request and the
sampling settings, so runs are deterministic and every call can be counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfakejudge.backends import GenerationConfig
from deepfakejudge.backends.base import (
    Backend,
    BackendError,
    Capabilities,
    Generation,
    raise_failures,
)
from deepfakejudge.bootstrap import (
    BootstrapConfig,
    CallSettings,
    RolePrompts,
    Settings,
    call_bounds,
    parse_explanation,
    run_bootstrap,
    verdict,
)
from deepfakejudge.cli import main
from deepfakejudge.data import load_records
from deepfakejudge.prompts import default_template
from deepfakejudge.train.examples import build_examples

_IMG = re.compile(r"IMG\[(\w+)\]")
_LVL = re.compile(r"lvl (\d)")
_ROUND = re.compile(r"round (\d+)")
_PARA = re.compile(r"para (\d+)")


def role_of(text: str) -> str:
    if "Write one explanation for the image above" in text:
        return "generate"
    if "Revise it so that it sits at level" in text:
        return "refine"
    if "Reword the explanation below" in text:
        return "paraphrase"
    if "Candidate explanation:" in text or "Explanation to rate:" in text:
        return "evaluate"
    raise AssertionError(f"unknown prompt: {text[:80]!r}")


def aligned(image, level, rnd, para):
    return level


POLICIES = {
    "aligned": aligned,
    # level 3 reads one too high at first and is fixed by one refinement; level 1 never aligns.
    "mixed": lambda image, level, rnd, para: (4 if rnd == 0 else 3) if level == 3 else (2 if level == 1 else level),
}


class Scripted(Backend):
    """Deterministic generator + evaluator (see the module docstring). `options` is accepted so
    that the CLI can load it through the backend registry (`DFJ_TEST_POLICY` picks the policy,
    `DFJ_TEST_CALL_LOG` appends one line per request). With `counts`, every generation carries
    token counts as a server's `usage` would: 100 prompt + 10 generated tokens for a generator
    call, 200 + 20 for an evaluator call. `truncated` outputs are well-formed prose that stopped
    at the token limit (finish_reason "length")."""

    name = "scripted"
    capabilities = Capabilities(logprobs=False, choice_probs=True)

    def __init__(self, options=None, rate=None, malformed=None, fail=None, unparsable=None, truncated=None,
                 counts=False):
        self.rate = rate or POLICIES[os.environ.get("DFJ_TEST_POLICY", "aligned")]
        self.malformed = malformed or (lambda image, level, rnd, seed: False)
        self.fail = fail or (lambda role, image, level: False)
        self.unparsable = unparsable or (lambda image, level, config: False)
        self.truncated = truncated or (lambda image, level, rnd, seed: False)
        self.counts = counts
        self.calls: Counter = Counter()
        self.log: list[tuple[str, str, GenerationConfig]] = []
        self.closed = False
        path = os.environ.get("DFJ_TEST_CALL_LOG")
        self._log_file = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115

    def _record(self, role: str, text: str, config) -> None:
        self.calls[role] += 1
        self.log.append((role, text, config))
        if self._log_file is not None:
            self._log_file.write(json.dumps([role, text, getattr(config, "seed", None)]) + "\n")
            self._log_file.flush()

    def _one(self, request, config):
        out = self._answer(request, config)
        if self.counts and isinstance(out, Generation):
            evaluating = role_of(request.text) == "evaluate"
            return dataclasses.replace(out, prompt_tokens=200 if evaluating else 100,
                                       completion_tokens=20 if evaluating else 10)
        return out

    def _answer(self, request, config):
        text = request.text
        role = role_of(text)
        self._record(role, text, config)
        image = _IMG.search(text).group(1)
        if role == "evaluate":
            candidate = text.split("Candidate explanation:" if "Candidate explanation:" in text else "Explanation to rate:")[1]
            level = int(_LVL.search(candidate).group(1))
            rnd = int(_ROUND.search(candidate).group(1))
            para = _PARA.search(candidate)
            if self.fail("evaluate", image, level):
                return BackendError("scripted evaluator failure")
            if self.unparsable(image, level, config):
                return Generation(text="I would rather not say.")
            score = self.rate(image, level, rnd, int(para.group(1)) if para else 0)
            return Generation(text=f"<reasoning>Reads as level {score}; the {image} details.</reasoning>\n<score>{score}</score>")
        if role == "paraphrase":
            body = text.split("Explanation:\n", 1)[1].split("\n\nAnswer in exactly", 1)[0]
            level = int(_LVL.search(body).group(1))
            if self.fail("paraphrase", image, level):
                return BackendError("scripted paraphraser failure")
            variant = int(re.search(r"rewording number (\d+)", text).group(1))
            return Generation(text=f"<reasoning>{body} para {variant} seed {config.seed}</reasoning>")
        level = int(re.search(r"quality level (\d) on a scale", text).group(1))
        if self.fail(role, image, level):
            return BackendError(f"scripted {role} failure")
        if role == "generate":
            rnd = 0
            prev = None
        else:
            prev = text.split("The explanation to revise:\n", 1)[1]
            rnd = int(_ROUND.search(prev).group(1)) + 1
        if self.malformed(image, level, rnd, config.seed):
            return Generation(text="<reasoning>cut off")
        if self.truncated(image, level, rnd, config.seed):
            return Generation(text=f"IMG[{image}] lvl {level} round {rnd} s={config.seed}: the smear on the", finish_reason="length")
        return Generation(text=f"<reasoning>IMG[{image}] lvl {level} round {rnd} t={config.temperature} s={config.seed}</reasoning>")

    def generate_each(self, requests, config):
        time.sleep(float(os.environ.get("DFJ_TEST_DELAY", "0")))  # lets a test kill a run mid-way
        return [self._one(r, config) for r in requests]

    def generate(self, requests, config):
        return raise_failures(self.generate_each(requests, config))

    def choice_probs_each(self, requests, choices):
        out = []
        for r in requests:
            self._record("evaluate", r.text, None)
            candidate = r.text.split("Candidate explanation:")[1]
            level, rnd = int(_LVL.search(candidate).group(1)), int(_ROUND.search(candidate).group(1))
            para = _PARA.search(candidate)
            score = self.rate(_IMG.search(r.text).group(1), level, rnd, int(para.group(1)) if para else 0)
            out.append({c: (0.9 if c == str(score) else 0.02) for c in choices})
        return out

    def describe(self):
        return {"backend": "scripted"}

    def close(self):
        self.closed = True
        if self._log_file is not None:
            self._log_file.close()


def make_data(folder: Path, n: int = 3, bad: bool = False) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
        label = ("fake", "real", "edited")[i % 3]
        artifacts = [] if label == "real" else [{"category": "texture", "bbox": [4, 5, 30, 40], "expression": "the smear"}]
        rows.append({"id": f"im{i}", "image": f"im{i}.png", "label": label, "source": "test",
                     # The gold rationale reads as the scripted generator's level-5 text: level 5 is the gold.
                     "artifacts": artifacts, "rationale": f"IMG[im{i}] lvl 5 round 0 gold reasoning about the smear."})
    lines = [json.dumps(r) for r in rows]
    if bad:
        lines += [
            "{not json",
            json.dumps({"id": "nofile", "image": "missing.png", "label": "fake", "rationale": "IMG[nofile] x"}),
            json.dumps({"id": "norationale", "image": "im0.png", "label": "fake"}),
        ]
    path = folder / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def config(tmp_path, data, **over) -> BootstrapConfig:
    settings = over.pop("settings", Settings(rounds=3, tolerance=0, paraphrases=2, recheck=True, paraphrase_retries=1))
    calls = over.pop("calls", CallSettings(batch_size=over.pop("batch_size", 64)))
    # The loop's tests count every record: the test split is built like train unless a test asks
    # for the released layout.
    return BootstrapConfig(data=data, out=tmp_path / over.pop("out", "run"), settings=settings, calls=calls,
                           test_fraction=over.pop("test_fraction", 0.34),
                           test_layout=over.pop("test_layout", "like-train"), **over)


def run(cfg, backend, prompts=None):
    return run_bootstrap(cfg, prompts or RolePrompts.load(), lambda: (backend, backend))


def rows(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def journal(out: Path):
    return [r for r in rows(out / "journal.jsonl") if r["e"] != "run"]


# -- parsing the generator's output: an adversarial table -------------------------------------------

@pytest.mark.parametrize("text,label,level,response,malformed", [
    ("<reasoning>Smear on the left.</reasoning>", "fake", 5, "<reasoning>Smear on the left.</reasoning> <answer>fake</answer>", None),
    ("  Plain prose, no tags.  ", "edited", 3, "<reasoning>Plain prose, no tags.</reasoning> <answer>fake</answer>", None),
    ("<reasoning>Looks real.</reasoning> <answer>real</answer>", "fake", 1, "<reasoning>Looks real.</reasoning> <answer>real</answer>", None),
    ("<reasoning>Looks fake.</reasoning> <answer>fake</answer>", "fake", 1, None, "answers 'fake' but level 1 argues for 'real'"),
    ("<reasoning>cut off", "fake", 4, None, "no closed <reasoning>"),
    ("", "real", 2, None, "empty explanation"),
    ("<reasoning>   </reasoning>", "real", 2, None, "empty explanation"),
    ("<reasoning>a <score>5</score> b</reasoning>", "real", 5, None, "tags inside the reasoning"),
    ("<Reasoning>Case.</REASONING>", "real", 4, "<reasoning>Case.</reasoning> <answer>real</answer>", None),
    ("prose then </answer>", "real", 4, None, "no closed <reasoning>"),
])
def test_parse_explanation(text, label, level, response, malformed):
    got = parse_explanation(text, label, level)
    assert got.response == response
    assert (got.malformed is None) == (malformed is None)
    if malformed:
        assert malformed in got.malformed


def test_verdict_is_fixed_by_the_level():
    # The rubric: 3..5 argue for the true class, 2 (unsure) and 1 (confident) for the wrong one.
    assert [verdict("fake", k) for k in (1, 2, 3, 4, 5)] == ["real", "real", "fake", "fake", "fake"]
    assert [verdict("edited", k) for k in (1, 2, 3, 5)] == ["real", "real", "fake", "fake"]
    assert [verdict("real", k) for k in (1, 2, 3, 5)] == ["fake", "fake", "real", "real"]


def test_role_templates_are_hashed_and_overridable(tmp_path):
    p = RolePrompts.load()
    info = p.provenance()
    assert info["evaluator_kind"] == "reference" and len(info["generate"]["sha256"]) == 64
    assert len({info[r]["sha256"] for r in ("generate", "refine", "paraphrase", "evaluate", "levels")}) == 5
    levels = tmp_path / "levels.txt"
    levels.write_text("\n".join(f"{k}: custom {k}" for k in range(1, 6)) + "\n")
    q = RolePrompts.load({"levels": str(levels)})
    assert q.level_text[3] == "custom 3" and q.provenance()["levels"]["sha256"] != info["levels"]["sha256"]
    levels.write_text("1: only one\n")
    with pytest.raises(ValueError, match=r"no description for level\(s\) \[2, 3, 4, 5\]"):
        RolePrompts.load({"levels": str(levels)})
    bad = tmp_path / "gen.txt"
    bad.write_text("Write at level {level}")
    with pytest.raises(ValueError, match="must contain"):
        RolePrompts.load({"generate": str(bad)})
    judge = RolePrompts.load(evaluator_template="default")
    assert judge.evaluator_kind == "judge" and judge.evaluate.sha256 == default_template("pointwise").sha256


# -- the state machine ----------------------------------------------------------------------------

def test_all_aligned_first_time(tmp_path):
    data = make_data(tmp_path)
    backend = Scripted()
    result = run(config(tmp_path, data), backend)
    # 3 images x 5 levels: generate (not the gold level 5) + evaluate, then 2 paraphrases + 2 rechecks each.
    assert backend.calls == {"generate": 12, "evaluate": 15 + 30, "paraphrase": 30}
    assert result.stats["acceptance_rate"] == 1.0 and result.stats["mean_rounds"] == 0
    assert result.summary["usage"]["calls_total"] == 87 and result.errors == 0
    assert call_bounds(3, config(tmp_path, data).settings)[0] == 87
    out = result.out
    point = rows(out / "pointwise-train.jsonl") + rows(out / "pointwise-test.jsonl")
    assert len(point) == 15 * 3  # the explanation and two paraphrases per unit
    assert backend.closed


def test_misaligned_then_aligned_and_never_aligned(tmp_path):
    data = make_data(tmp_path)
    backend = Scripted(rate=POLICIES["mixed"])
    result = run(config(tmp_path, data), backend)
    st = result.stats
    assert st["per_level"]["3"]["accepted"] == 3 and st["per_level"]["3"]["mean_rounds_accepted"] == 1
    assert st["per_level"]["3"]["first_round_aligned"] == 0.0
    assert st["per_level"]["1"]["accepted"] == 0 and st["per_level"]["1"]["rejected"] == 3
    assert st["rejection_reasons"] == {"never aligned": 3}
    # Confusion: level 3 was first rated 4, finally 3; level 1 always 2.
    assert st["confusion"]["first"]["3"]["4"] == 3 and st["confusion"]["final"]["3"]["3"] == 3
    assert st["confusion"]["final"]["1"]["2"] == 3
    # The refinement saw the evaluator's score, feedback and the direction.
    refines = [t for role, t, _ in backend.log if role == "refine"]
    level3 = [t for t in refines if "sits at level 3" in t]
    assert len(level3) == 3 and all("placed it at level 4: it reads better than intended" in t for t in level3)
    assert all("Reads as level 4" in t for t in level3)
    level1 = [t for t in refines if "sits at level 1" in t]
    assert len(level1) == 9 and all("it reads better than intended" in t for t in level1)  # 3 rounds x 3 images
    rejected = rows(result.out / "rejected.jsonl")
    assert [r["level"] for r in rejected] == [1, 1, 1]
    assert all(r["reason"] == "evaluator rated 2, intended 1, after 3 refinement round(s) (ratings [2, 2, 2, 2])"
               for r in rejected)
    # Never aligned: 1 + 3 generator calls and 4 evaluations per unit, nothing more.
    events = [e for e in journal(result.out) if e["u"] == "im0#1"]
    assert [e["e"] for e in events] == ["gen", "eval"] * 4
    # Accepted level 3 is recorded with its round count and the final rating.
    point = [r for r in rows(result.out / "pointwise-train.jsonl") + rows(result.out / "pointwise-test.jsonl")
             if r["score"] == 3]
    assert {r["rounds"] for r in point} == {1} and {r["evaluator_score"] for r in point} == {3}


def test_tolerance_accepts_neighbours(tmp_path):
    data = make_data(tmp_path)
    cfg = config(tmp_path, data, settings=Settings(rounds=3, tolerance=1, paraphrases=0))
    backend = Scripted(rate=POLICIES["mixed"])
    result = run(cfg, backend)
    assert result.stats["acceptance_rate"] == 1.0 and backend.calls["refine"] == 0


def test_malformed_generator_output_is_asked_again_with_another_seed(tmp_path):
    data = make_data(tmp_path, n=1)
    # level 4: malformed at seed 0, fine once reseeded; level 2: malformed whatever the seed.
    backend = Scripted(malformed=lambda image, level, rnd, seed: level == 2 or (level == 4 and seed == 0))
    cfg = config(tmp_path, data, settings=Settings(rounds=2, paraphrases=0),
                 calls=CallSettings(generator=GenerationConfig(temperature=0.0, seed=0, max_new_tokens=64)))
    result = run(cfg, backend)
    gens = [(t, c) for role, t, c in backend.log if role == "generate" and "quality level 4" in t]
    assert [(c.seed, c.temperature) for _, c in gens] == [(0, 0.0), (1, 0.7)]  # greedy would repeat itself
    st = result.stats
    assert st["per_level"]["4"]["accepted"] == 1
    assert st["per_level"]["2"]["rejected"] == 1 and st["rejection_reasons"] == {"malformed generator output": 1}
    assert st["malformed_generations"] == 1 + 3
    rejected = rows(result.out / "rejected.jsonl")
    assert rejected[0]["malformed"] == ["no closed <reasoning>…</reasoning> block"] * 3
    assert backend.calls["generate"] == 2 + 3 + 2  # level 4: 2; level 2: 1 + 2 rounds; 3 and 1: 1 each; 5: gold


def test_truncated_generator_output_is_malformed_unless_kept(tmp_path):
    data = make_data(tmp_path, n=1)
    # Untagged prose that parses as an explanation, but stopped at the token limit. Level 4: cut off at
    # seed 0 only (fine once reseeded); level 2: always cut off.
    cut = lambda image, level, rnd, seed: level == 2 or (level == 4 and seed == 0)
    cfg = config(tmp_path, data, settings=Settings(rounds=2, paraphrases=0),
                 calls=CallSettings(generator=GenerationConfig(temperature=0.0, seed=0, max_new_tokens=64)))
    backend = Scripted(truncated=cut)
    result = run(cfg, backend)
    st = result.stats
    assert st["per_level"]["4"]["accepted"] == 1 and st["per_level"]["2"]["rejected"] == 1
    assert st["rejection_reasons"] == {"generator output cut off at the token limit": 1}
    assert st["truncated_outputs"] == st["malformed_generations"] == 1 + 3
    # Asked again, sampled with another seed, as for any malformed output; never rated.
    gens = [c for role, t, c in backend.log if role == "generate" and "quality level 4" in t]
    assert [(c.seed, c.temperature) for c in gens] == [(0, 0.0), (1, 0.7)]
    assert backend.calls == {"generate": 2 + 3 + 2, "evaluate": 4}
    reason = ("cut off at the token limit (64 tokens): raise --generator-max-new-tokens, or pass --keep-truncated "
              "to keep such outputs")
    (rejected,) = rows(result.out / "rejected.jsonl")
    assert rejected["level"] == 2 and rejected["malformed"] == [reason] * 3
    assert all(e["finish"] == "length" and e["response"] is None
               for e in journal(result.out) if e["e"] == "gen" and e["u"] == "im0#2")
    # --keep-truncated: the same outputs are explanations; every unit is accepted at the first try.
    kept = Scripted(truncated=cut)
    cfg = dataclasses.replace(cfg, out=tmp_path / "kept", settings=Settings(rounds=2, paraphrases=0, keep_truncated=True))
    result = run(cfg, kept)
    assert result.stats["acceptance_rate"] == 1.0 and result.stats["malformed_generations"] == 0
    assert result.stats["truncated_outputs"] == 2 and kept.calls == {"generate": 4, "evaluate": 5}
    point = {r["score"]: r for r in rows(result.out / "pointwise-train.jsonl") + rows(result.out / "pointwise-test.jsonl")}
    # Level 2 argues for the wrong class (im0 is fake).
    assert point[2]["response"] == "<reasoning>IMG[im0] lvl 2 round 0 s=0: the smear on the</reasoning> <answer>real</answer>"


def test_cli_keep_truncated_flag(tmp_path):
    from deepfakejudge.cli.bootstrap import build, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    common = ["bootstrap", "--generator", "g", "--evaluator", "e", "--data", "d.jsonl", "--out", str(tmp_path)]
    assert build(parser.parse_args(common))[0].settings.keep_truncated is False
    assert build(parser.parse_args([*common, "--keep-truncated"]))[0].settings.keep_truncated is True
    default = build(parser.parse_args(common))[0]
    assert (default.settings.level5, default.test_layout, default.test_fraction) == ("gold", "released", 0.2)
    other = build(parser.parse_args([*common, "--level5", "generated", "--test-layout", "like-train"]))[0]
    assert (other.settings.level5, other.test_layout) == ("generated", "like-train")


def test_token_counts_from_usage_and_calls_without_them(tmp_path, capsys, monkeypatch):
    data = make_data(tmp_path, n=1)
    # Level 4's ratings (of the explanation and of its paraphrase) parse only when re-asked: one event for two calls.
    unparsable = lambda image, level, c: level == 4 and c.temperature == 0
    calls = CallSettings(evaluator=GenerationConfig(max_new_tokens=64, reasks=1))
    result = run(config(tmp_path, data, calls=calls, settings=Settings(paraphrases=1)),
                 Scripted(counts=True, unparsable=unparsable))
    u = result.stats["usage"]
    roles = ("generate", "refine", "paraphrase", "evaluate", "recheck")
    assert u["calls"] == dict(zip(roles, (4, 0, 5, 6, 6)))  # level 5 is the gold: not generated
    assert u["prompt_tokens"] == dict(zip(roles, (400, 0, 500, 1200, 1200))) and u["prompt_tokens_total"] == 3300
    assert u["generated_tokens"] == dict(zip(roles, (40, 0, 50, 120, 120))) and u["generated_tokens_total"] == 330
    assert u["calls_without_prompt_tokens"] == u["calls_without_generated_tokens"] == dict.fromkeys(roles, 0)
    (reasked,) = [e for e in journal(result.out) if e["e"] == "eval" and e["calls"] == 2]
    assert reasked["u"] == "im0#4" and (reasked["prompt_tokens"], reasked["tokens"]) == (400, 40)
    assert result.summary["this_run"]["prompt_tokens"] == 3300 and result.summary["this_run"]["generated_tokens"] == 330
    # A score-only evaluator reports no counts (no text is generated; choice probabilities carry no
    # usage): its calls are listed as uncounted, the generator's still counted.
    result = run(config(tmp_path, data, out="score-only", calls=CallSettings(evaluator_mode="score-only"),
                        settings=Settings(paraphrases=1)), Scripted(counts=True))
    u = result.stats["usage"]
    assert u["prompt_tokens"] == dict(zip(roles, (400, 0, 500, 0, 0)))
    assert u["calls_without_prompt_tokens"] == u["calls_without_generated_tokens"] == dict(zip(roles, (0, 0, 0, 5, 5)))
    # An engine without counts or log-probs: nothing is counted, and the CLI says so.
    from deepfakejudge.backends import BACKENDS

    monkeypatch.setitem(BACKENDS, "scripted", (__name__, "Scripted", "dev"))
    argv = ["bootstrap", "--generator", "g", "--generator-backend", "scripted", "--evaluator", "g",
            "--evaluator-backend", "scripted", "--data", str(data), "--out", str(tmp_path / "cli"),
            "--paraphrases", "0", "--no-cache"]
    assert main(argv) == 0
    assert ("prompt tokens 0, generated tokens 0 (not counted: prompt tokens of 9 calls, generated tokens of 9; "
            "see stats.json)") in capsys.readouterr().out
    u = json.loads((tmp_path / "cli" / "stats.json").read_text())["usage"]
    assert u["calls_without_prompt_tokens"] == dict(zip(roles, (4, 0, 0, 5, 0)))


def test_evaluator_without_a_score_is_reasked_then_rejected(tmp_path):
    data = make_data(tmp_path, n=1)
    # Level 4's rating parses only when sampled (a re-ask); level 2's never does.
    backend = Scripted(unparsable=lambda image, level, c: level == 2 or (level == 4 and c.temperature == 0))
    calls = CallSettings(evaluator=GenerationConfig(max_new_tokens=64, reasks=1))
    result = run(config(tmp_path, data, calls=calls, settings=Settings(paraphrases=0)), backend)
    st = result.stats
    assert st["per_level"]["4"]["accepted"] == 1
    assert st["per_level"]["2"]["rejected"] == 1 and st["rejection_reasons"] == {"evaluator unparsable": 1}
    assert st["confusion"]["first"]["2"]["none"] == 1
    evals = [e for e in journal(result.out) if e["e"] == "eval"]
    assert {e["u"]: e["calls"] for e in evals} == {"im0#1": 1, "im0#2": 2, "im0#3": 1, "im0#4": 2, "im0#5": 1}
    assert [e["raw"] for e in evals if e["u"] == "im0#2"] == ["I would rather not say."]
    assert st["usage"]["calls"]["evaluate"] == 7


def test_failures_become_error_rows_and_retry_failed_reopens_them(tmp_path, capsys):
    data = make_data(tmp_path, n=2, bad=True)
    backend = Scripted(fail=lambda role, image, level: role == "generate" and (image, level) == ("im1", 4)
                       or role == "paraphrase" and (image, level) == ("im0", 5))
    cfg = config(tmp_path, data)
    result = run(cfg, backend)
    errors = rows(result.out / "errors.jsonl")
    fields = sorted(((e["id"] or ""), e["field"]) for e in errors)
    assert fields == [("", "<row>"), ("im0-l5-p1", "<model>"), ("im0-l5-p2", "<model>"), ("im1-l4", "<model>"),
                      ("nofile", "image"), ("norationale", "rationale")]
    assert result.errors == 6 and result.stats["status"]["failed"] == 1
    assert "scripted generate failure" in next(e["error"] for e in errors if e["id"] == "im1-l4")
    # Everything valid is kept: im0 level 5 without its failed paraphrases, im1 without level 4.
    point = rows(result.out / "pointwise-train.jsonl") + rows(result.out / "pointwise-test.jsonl")
    assert sorted(r["id"] for r in point if r["image_id"] == "im0" and r["score"] == 5) == ["im0-l5-v0"]
    assert not [r for r in point if r["image_id"] == "im1" and r["score"] == 4]
    # A plain rerun changes nothing and calls nothing; --retry-failed asks the failed calls again.
    again = Scripted()
    run(cfg, again)
    assert sum(again.calls.values()) == 0 and len(rows(result.out / "errors.jsonl")) == 6
    fixed = Scripted()
    result = run(dataclasses.replace(cfg, retry_failed=True), fixed)
    assert fixed.calls == {"generate": 1, "evaluate": 1 + 2 + 2, "paraphrase": 2 + 2}
    assert result.errors == 3  # the bad input rows stay
    point = rows(result.out / "pointwise-train.jsonl") + rows(result.out / "pointwise-test.jsonl")
    assert len(point) == 10 * 3


def test_paraphrases_rechecked_retried_and_dropped(tmp_path):
    data = make_data(tmp_path, n=1)
    # Paraphrase 2 of every unit is re-rated one level off: retried once, then dropped.
    backend = Scripted(rate=lambda image, level, rnd, para: level + (1 if para == 2 and level < 5 else 0)
                       - (1 if para == 2 and level == 5 else 0))
    result = run(config(tmp_path, data), backend)
    para = result.stats["paraphrases"]
    assert para == {"slots": 10, "kept": 5, "dropped": 5, "failed": 0, "pending": 0,
                    "recheck_agreement": round(5 / 15, 4), "malformed": 0}
    point = rows(result.out / "pointwise-train.jsonl") + rows(result.out / "pointwise-test.jsonl")
    assert sorted({r["variant"] for r in point}) == [0, 1] and len(point) == 10
    # The retry of slot 2 asked with another seed.
    seeds = [c.seed for role, t, c in backend.log if role == "paraphrase" and "rewording number 2" in t]
    assert sorted(Counter(seeds).items()) == [(0, 5), (1, 5)]
    # Without recheck: no evaluator call for paraphrases, all kept.
    plain = Scripted()
    cfg = config(tmp_path, data, out="plain", settings=Settings(paraphrases=3, recheck=False))
    result = run(cfg, plain)
    assert plain.calls == {"generate": 4, "evaluate": 5, "paraphrase": 15}
    assert result.summary["outputs"]["rows"]["pointwise-train"] + result.summary["outputs"]["rows"]["pointwise-test"] == 20


def test_score_only_evaluator_and_dfj_judge_template(tmp_path):
    data = make_data(tmp_path, n=1)
    backend = Scripted(rate=POLICIES["mixed"])
    cfg = config(tmp_path, data, calls=CallSettings(evaluator_mode="score-only"), settings=Settings(paraphrases=0))
    result = run(cfg, backend)
    assert result.stats["per_level"]["3"]["accepted"] == 1
    refine = next(t for role, t, _ in backend.log if role == "refine" and "sits at level 3" in t)
    assert "(no justification given)" in refine
    point = {r["score"]: r for r in rows(result.out / "pointwise-train.jsonl") + rows(result.out / "pointwise-test.jsonl")}
    # No justification to learn from: the target's reasoning is the level's description.
    assert point[3]["target"].startswith("<reasoning>Partly right, with the right verdict.")
    assert point[3]["target"].endswith("<score>3</score>")
    # A DFJ judge as the evaluator sees only the label and the explanation, through its template.
    judge = Scripted()
    cfg = config(tmp_path, data, out="judge", settings=Settings(paraphrases=0))
    run(cfg, judge, RolePrompts.load(evaluator_template="default"))
    texts = [t for role, t, _ in judge.log if role == "evaluate"]
    assert texts and all("Explanation to rate:" in t and "Reference explanation" not in t
                         and "Annotated evidence" not in t for t in texts)


# -- outputs ---------------------------------------------------------------------------------------

def test_outputs_validate_split_by_image_and_balanced_pairs(tmp_path, capsys):
    data = make_data(tmp_path, n=6)
    result = run(config(tmp_path, data, test_fraction=0.34, seed=3), Scripted())
    out = result.out
    point, pairs = {}, {}
    for split in ("train", "test"):
        for kind, store in (("pointwise", point), ("pairwise", pairs)):
            path = out / f"{kind}-{split}.jsonl"
            # The records name the input's images, outside the run folder: allowed with --image-root.
            assert main(["data", "validate", str(path), "--image-root", str(tmp_path)]) == 0
            ds = load_records(path)
            assert not ds.errors
            store[split] = ds.samples
            # The ms-swift rows load with the project's reader and are ready for training.
            swift = load_records(out / "msswift" / f"{kind}-{split}.jsonl")
            assert not swift.errors and len(swift.samples) == len(ds.samples)
            # Absolute image paths: ms-swift opens them from any working directory.
            named = [json.loads(line)["images"][0] for line in (out / "msswift" / f"{kind}-{split}.jsonl").open()]
            assert named and all(Path(n).is_absolute() and Path(n).is_file() for n in named)
            examples, errors = build_examples(swift.samples, default_template(kind))
            assert not errors and len(examples) == len(ds.samples)
            if kind == "pointwise":
                assert [s.score for s in swift.samples] == [s.score for s in ds.samples]
            else:
                assert [s.preferred for s in swift.samples] == [s.preferred for s in ds.samples]
    capsys.readouterr()
    train_images = {s.extra["image_id"] for s in point["train"]}
    test_images = {s.extra["image_id"] for s in point["test"]}
    assert train_images and test_images and not train_images & test_images
    assert {s.extra["image_id"] for s in pairs["test"]} == test_images
    assert len(point["train"]) + len(point["test"]) == 6 * 5 * 3
    all_pairs = pairs["train"] + pairs["test"]
    assert len(all_pairs) == 6 * 15  # as many pairs as pointwise records per image
    for s in all_pairs:
        assert s.extra["score_a"] != s.extra["score_b"]
        assert s.preferred == ("A" if s.extra["score_a"] > s.extra["score_b"] else "B")
        assert s.response_a != s.response_b
    for image in train_images | test_images:
        mine = [s for s in all_pairs if s.extra["image_id"] == image]
        a = sum(s.preferred == "A" for s in mine)
        assert abs(2 * a - len(mine)) <= 1, (image, a, len(mine))
        level_pairs = {tuple(sorted((s.extra["score_a"], s.extra["score_b"]))) for s in mine}
        assert len(level_pairs) == 10  # every pair of levels occurs
    assert len({s.id for s in all_pairs}) == len(all_pairs)
    # Records follow the detector contract and keep the input's annotations.
    sample = point["train"][0]
    assert re.fullmatch(r"<reasoning>.+</reasoning> <answer>(real|fake)</answer>", sample.response)
    assert sample.rationale.startswith("IMG[") and sample.extra["target"].endswith(f"<score>{sample.score}</score>")


def test_deterministic_given_a_seed(tmp_path):
    data = make_data(tmp_path, n=4)
    files = ("pointwise-train.jsonl", "pointwise-test.jsonl", "pairwise-train.jsonl", "pairwise-test.jsonl",
             "msswift/pointwise-train.jsonl", "stats.json")

    def outputs(name, seed, batch_size):
        result = run(config(tmp_path, data, out=name, seed=seed, batch_size=batch_size), Scripted(rate=POLICIES["mixed"]))
        stats = json.loads((result.out / "stats.json").read_text())
        return [(result.out / f).read_text() for f in files[:-1]] + [json.dumps({k: v for k, v in stats.items()})]

    first = outputs("a", 7, 64)
    assert outputs("b", 7, 64) == first
    # The batch size changes how calls are grouped, never what is produced.
    assert outputs("c", 7, 5) == first
    assert outputs("d", 8, 64)[2] != first[2]  # another seed: other pairs


def test_resume_after_an_interruption_repeats_no_finished_call(tmp_path):
    data = make_data(tmp_path, n=3)
    full = Scripted(rate=POLICIES["mixed"])
    reference = run(config(tmp_path, data, out="full", batch_size=7), full)

    class Interrupt(BaseException):
        pass

    class Dying(Scripted):
        def __init__(self, budget):
            super().__init__(rate=POLICIES["mixed"])
            self.budget = budget

        def generate_each(self, requests, config):
            if self.budget <= 0:
                raise Interrupt()
            self.budget -= len(requests)
            return super().generate_each(requests, config)

    cfg = config(tmp_path, data, out="killed", batch_size=7)
    made = Counter()
    for budget in (10, 25, 40):
        dying = Dying(budget)
        with pytest.raises(Interrupt):
            run(cfg, dying)
        made += dying.calls
        summary = json.loads((cfg.out / "summary.json").read_text())  # written on the way out
        assert not summary["complete"] and summary["this_run"]["calls_total"] <= sum(dying.calls.values())
    finisher = Scripted(rate=POLICIES["mixed"])
    result = run(cfg, finisher)
    made += finisher.calls
    # Only the step in flight at each interruption is asked again: at most 7 calls per interruption.
    total, expected = sum(made.values()), sum(full.calls.values())
    assert expected <= total <= expected + 3 * 7
    # Every finished call is in the journal exactly once, and the data equals the uninterrupted run's.
    keys = [(e["u"], e["e"], e.get("round"), e.get("slot"), e.get("attempt")) for e in journal(result.out)]
    assert len(keys) == len(set(keys)) == len(journal(reference.out))
    for name in ("pointwise-train.jsonl", "pairwise-test.jsonl", "rejected.jsonl"):
        assert (result.out / name).read_text() == (reference.out / name).read_text()


def test_resume_refuses_other_settings(tmp_path):
    data = make_data(tmp_path, n=1)
    run(config(tmp_path, data), Scripted())
    with pytest.raises(ValueError, match=r"loop.rounds: 3 -> 2"):
        run(config(tmp_path, data, settings=Settings(rounds=2, paraphrases=2)), Scripted())
    levels = tmp_path / "levels.txt"
    levels.write_text("\n".join(f"{k}: custom {k}" for k in range(1, 6)))
    with pytest.raises(ValueError, match=r"prompts.levels.sha256"):
        run(config(tmp_path, data), Scripted(), RolePrompts.load({"levels": str(levels)}))


def test_torn_journal_line_is_cut_and_the_call_made_again(tmp_path):
    data = make_data(tmp_path, n=1)
    cfg = config(tmp_path, data, settings=Settings(paraphrases=0))
    run(cfg, Scripted())
    path = cfg.out / "journal.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    last_eval = max(i for i, line in enumerate(lines) if '"e": "eval"' in line)
    path.write_text("".join(lines[:last_eval]) + lines[last_eval][: len(lines[last_eval]) // 2])
    again = Scripted()
    result = run(cfg, again)
    assert again.calls == {"evaluate": 1} and result.stats["status"] == {"done": 5}


# -- the command line -------------------------------------------------------------------------------

def test_cli_dry_run_prints_prompts_and_calls_nothing(tmp_path, capsys):
    (tmp_path / "clean").mkdir()
    clean = make_data(tmp_path / "clean", n=3)
    out = tmp_path / "dry"
    code = main(["bootstrap", "--generator", "nowhere/gen", "--evaluator", "nowhere/eval", "--data", str(clean),
                 "--out", str(out), "--dry-run", "--limit", "2"])
    captured = capsys.readouterr()
    assert code == 0 and not out.exists()
    assert captured.out.count("===== generate · ") == 8 and captured.out.count("===== gold · ") == 2
    for role in ("evaluate", "refine", "paraphrase"):
        assert f"===== {role} · im0" in captured.out
    assert "IMG[im1] lvl 5 round 0 gold reasoning" in captured.out
    assert "- texture at [4, 5, 30, 40] (middle left): the smear" in captured.out
    # Per train image: 4 generated levels x 2..8 calls, 1 gold evaluation, 5 levels x 4 paraphrases x 2..4
    # calls: 49..113. The test image (released layout, no paraphrases): 4 x 2..8 + 1 = 9..33.
    assert "# dry run: 2 images (1 test), 10 units; 58 to 146 model calls" in captured.out
    # Bad rows are reported on stderr, exit 1.
    data = make_data(tmp_path, n=2, bad=True)
    code = main(["bootstrap", "--generator", "g", "--evaluator", "e", "--data", str(data), "--out", str(out), "--dry-run"])
    captured = capsys.readouterr()
    assert code == 1 and "field 'rationale'" in captured.err and "missing.png" in captured.err


def test_the_dry_run_plan_is_data_and_prints_nothing(tmp_path, capsys):
    """The library gathers the prompts and bounds; only `dfj bootstrap --dry-run` prints them."""
    from deepfakejudge.bootstrap import plan_dry_run

    data = make_data(tmp_path, n=2, bad=True)
    cfg = config(tmp_path, data, settings=Settings(rounds=3, tolerance=0, paraphrases=4, recheck=True,
                                                   paraphrase_retries=1))
    plan = plan_dry_run(cfg, RolePrompts.load())
    assert capsys.readouterr() == ("", "")
    assert not (tmp_path / "run").exists()
    titles = [p.title for p in plan.prompts]
    # Two good images (the bad rows are errors): 4 generated levels each and level 5 gold, then one
    # example of each other role after the first image.
    assert sum(t.startswith("generate · ") for t in titles) == 8 and sum(t.startswith("gold · ") for t in titles) == 2
    assert [t.split(" · ")[0] for t in titles[5:8]] == ["evaluate", "refine", "paraphrase"]
    assert plan.images == 2 and plan.units == 10
    # Each bad row once, named by its line: bad JSON (3), the missing image (4, found when opened), no rationale (5).
    assert sorted((e.where.rsplit(":", 1)[1], e.field) for e in plan.errors) == [
        ("3", "<row>"), ("4", "image"), ("5", "rationale")]
    assert plan.calls == call_bounds(2, cfg.settings)  # like-train layout: the test image is paraphrased too


def test_cli_runs_through_the_backend_registry(tmp_path, capsys, monkeypatch):
    from deepfakejudge.backends import BACKENDS

    monkeypatch.setitem(BACKENDS, "scripted", (__name__, "Scripted", "dev"))
    monkeypatch.setenv("DFJ_TEST_POLICY", "mixed")
    data = make_data(tmp_path, n=2)
    out = tmp_path / "cli"
    argv = ["bootstrap", "--generator", "gen", "--generator-backend", "scripted", "--evaluator", "gen",
            "--evaluator-backend", "scripted", "--data", str(data), "--out", str(out), "--paraphrases", "1",
            "--no-cache", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["complete"] and summary["settings"]["models"]["generator"]["model"] == "gen"
    assert summary["outputs"]["rows"]["rejected"] == 2 and summary["usage"]["calls_total"] == summary["this_run"]["calls_total"]
    assert main([*argv[:-1]]) == 0  # a rerun: nothing left to call
    assert "calls " in capsys.readouterr().out
    assert main([*argv, "--rounds", "2"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_progress_bar_counts_finished_units_and_acceptance(tmp_path):
    data = make_data(tmp_path, n=2)

    class Bar:
        def __init__(self, total):
            self.total, self.n, self.postfix, self.closed = total, 0, [], False

        def update(self, n):
            self.n += n

        def set_postfix_str(self, text, refresh=True):
            self.postfix.append(text)

        def close(self):
            self.closed = True

    bars = []
    cfg = config(tmp_path, data, batch_size=3)
    run_bootstrap(cfg, RolePrompts.load(), lambda: (Scripted(rate=POLICIES["mixed"]),) * 2,
                  progress=lambda total: bars.append(Bar(total)) or bars[-1])
    (bar,) = bars
    assert bar.total == 10 and bar.n == 10 and bar.closed
    assert len(bar.postfix) > 5 and bar.postfix[-1] == "acc 8 rej 2 fail 0 | L5 2/2 L4 2/2 L3 2/2 L2 2/2 L1 0/2"


def test_cli_evaluator_reasks_default_to_two_in_bootstrap_only(tmp_path):
    """An unparsable rating would reject the whole unit: bootstrap re-asks twice by default, while
    `dfj judge` stays greedy (0)."""
    from deepfakejudge.cli import build_parser
    from deepfakejudge.cli.bootstrap import build

    parser = build_parser()
    common = ["bootstrap", "--generator", "g", "--evaluator", "e", "--data", "d.jsonl", "--out", str(tmp_path)]
    assert build(parser.parse_args(common))[0].calls.evaluator.reasks == 2
    assert build(parser.parse_args([*common, "--reasks", "0"]))[0].calls.evaluator.reasks == 0
    judge = parser.parse_args(["judge", "pointwise", "--model", "m", "--data", "d", "--out", "o"])
    assert judge.reasks == 0


# -- the paper's construction: gold level 5, the rubric's verdicts, the released test layout --------

def test_level5_is_the_gold_rationale_rated_and_paraphrased_never_generated(tmp_path):
    data = make_data(tmp_path, n=3)
    samples = {s.id: s for s in load_records(data).samples}
    # The evaluator rates the gold a 3: a reference is accepted whatever the rating, and not refined.
    backend = Scripted(rate=lambda image, level, rnd, para: 3 if (level, para) == (5, 0) else level)
    result = run(config(tmp_path, data), backend)
    assert not [t for role, t, _ in backend.log if role in ("generate", "refine") and "quality level 5" in t]
    point = rows(result.out / "pointwise-train.jsonl") + rows(result.out / "pointwise-test.jsonl")
    gold = {r["image_id"]: r for r in point if r["score"] == 5 and r["variant"] == 0}
    assert sorted(gold) == ["im0", "im1", "im2"]
    for image_id, r in gold.items():
        s = samples[image_id]
        true = "real" if s.label == "real" else "fake"
        assert r["response"] == f"<reasoning>{s.rationale}</reasoning> <answer>{true}</answer>"
        assert (r["evaluator_score"], r["rounds"]) == (3, 0)
        # A justification of a 3 would contradict the score 5 learnt: the level's description stands in.
        assert r["target"] == f"<reasoning>{RolePrompts.load().level_text[5]}</reasoning>\n<score>5</score>"
    # Paraphrased like the other levels: the paraphraser was given the gold text.
    paras = [r for r in point if r["score"] == 5 and r["variant"] > 0]
    assert len(paras) == 3 * 2 and all("gold reasoning" in r["response"] for r in paras)
    assert result.stats["per_level"]["5"]["accepted"] == 3
    assert result.stats["confusion"]["first"]["5"]["3"] == 3
    # --level5 generated: the generator writes level 5 too (the behaviour before gold).
    old = Scripted()
    cfg = config(tmp_path, data, out="generated",
                 settings=Settings(rounds=3, paraphrases=0, level5="generated"))
    result = run(cfg, old)
    assert old.calls["generate"] == 15
    point = rows(result.out / "pointwise-train.jsonl") + rows(result.out / "pointwise-test.jsonl")
    assert all("gold reasoning" not in r["response"] for r in point if r["score"] == 5)
    # The choice is part of the run's fingerprint: a folder never mixes the two.
    with pytest.raises(ValueError, match="level5"):
        run(dataclasses.replace(cfg, settings=Settings(rounds=3, paraphrases=0)), Scripted())


def test_levels_follow_the_rubric_wrong_verdict_at_2_and_1(tmp_path):
    data = make_data(tmp_path, n=3)  # fake, real, edited
    labels = {s.id: s.label for s in load_records(data).samples}
    backend = Scripted()
    result = run(config(tmp_path, data), backend)
    point = rows(result.out / "pointwise-train.jsonl") + rows(result.out / "pointwise-test.jsonl")
    pairs = rows(result.out / "pairwise-train.jsonl") + rows(result.out / "pairwise-test.jsonl")
    assert {r["score"] for r in point} == {1, 2, 3, 4, 5}
    for r in point:  # every variant, paraphrases included
        true = "real" if labels[r["image_id"]] == "real" else "fake"
        wrong = "fake" if true == "real" else "real"
        said = re.search(r"<answer>(\w+)</answer>$", r["response"]).group(1)
        assert said == (true if r["score"] >= 3 else wrong), r["id"]
    # A pair between levels 3 and 2 is a right against a wrong verdict.
    for p in pairs:
        if {p["score_a"], p["score_b"]} == {2, 3}:
            three = p["response_a"] if p["score_a"] == 3 else p["response_b"]
            two = p["response_b"] if p["score_a"] == 3 else p["response_a"]
            assert three.split("<answer>")[1] != two.split("<answer>")[1]
    # The generator is told to argue the wrong verdict at level 2, with the rubric's description.
    prompts = RolePrompts.load()
    level2 = next(t for role, t, _ in backend.log if role == "generate" and "quality level 2" in t and "IMG[im1]" in t)
    assert 'must lead to the verdict "fake"' in level2 and prompts.level_text[2] in level2  # im1 is real


def tb_image(text: str) -> str:
    return _IMG.search(text).group(1)


def test_rubric_is_one_contract_for_generator_and_evaluator():
    """The levels file and the evaluator's scale agree with LEVEL_VERDICTS, level by level."""
    from deepfakejudge.bootstrap.prompts import LEVEL_VERDICTS

    prompts = RolePrompts.load()
    scale = {int(m.group(1)): m.group(2) for m in re.finditer(r"^([1-5]) - (.+)$", prompts.evaluate.text, re.M)}
    assert sorted(scale) == [1, 2, 3, 4, 5]
    for level, right in LEVEL_VERDICTS.items():
        words = "right verdict" if right else "wrong verdict"
        assert words in prompts.level_text[level].lower(), level
        assert words in scale[level].lower(), level
    assert "unsure" in prompts.level_text[3] and "unsure" in scale[3]
    assert "hedged" in prompts.level_text[2] and "unsure" in scale[2]
    assert "confident" in prompts.level_text[1] and "confident" in scale[1]


def test_released_test_layout_one_row_per_level_and_all_ten_pairs(tmp_path, capsys, monkeypatch):
    from deepfakejudge.backends import BACKENDS

    data = make_data(tmp_path, n=10)
    # Level 1 of im0 never aligns: its image has four levels (six pairs) wherever it lands.
    rate = lambda image, level, rnd, para: 2 if (image, level) == ("im0", 1) else level
    backend = Scripted(rate=rate)
    result = run(config(tmp_path, data, test_layout="released", test_fraction=0.2, seed=5), backend)
    out = result.out
    point = {s: rows(out / f"pointwise-{s}.jsonl") for s in ("train", "test")}
    pairs = {s: rows(out / f"pairwise-{s}.jsonl") for s in ("train", "test")}
    test_images = sorted({r["image_id"] for r in point["test"]})
    train_images = sorted({r["image_id"] for r in point["train"]})
    assert test_images and not set(test_images) & set(train_images) and len(test_images) + len(train_images) == 10
    for image in test_images:
        mine = [r for r in point["test"] if r["image_id"] == image]
        levels = [1, 2, 3, 4, 5] if image != "im0" else [2, 3, 4, 5]
        assert sorted(r["score"] for r in mine) == levels and {r["variant"] for r in mine} == {0}
        mine_pairs = [p for p in pairs["test"] if p["image_id"] == image]
        level_pairs = sorted(tuple(sorted((p["score_a"], p["score_b"]))) for p in mine_pairs)
        assert level_pairs == sorted(itertools.combinations(levels, 2))  # each level pair once
        assert abs(2 * sum(p["preferred"] == "A" for p in mine_pairs) - len(mine_pairs)) <= 1
        assert {p["response_a"] for p in mine_pairs} | {p["response_b"] for p in mine_pairs} <= {r["response"] for r in mine}
    # Test images are not paraphrased at all: the layout keeps no paraphrase, so none is asked for.
    paraphrased = {tb_image(t) for role, t, _ in backend.log if role == "paraphrase"}
    assert paraphrased == set(train_images)
    # Train is built as before: every variant, as many pairs as records.
    for image in train_images:
        mine = [r for r in point["train"] if r["image_id"] == image]
        assert len(mine) == (5 if image != "im0" else 4) * 3
        assert len([p for p in pairs["train"] if p["image_id"] == image]) == len(mine)
    outputs = result.summary["outputs"]
    assert outputs["images"] == {"train": len(train_images), "test": len(test_images)}
    # The layout shapes only the files: a rerun built like train asks for the missing paraphrases.
    more = Scripted(rate=rate)
    again = run(config(tmp_path, data, test_layout="like-train", test_fraction=0.2, seed=5), more)
    assert {tb_image(t) for role, t, _ in more.log if role == "paraphrase"} == set(test_images)
    assert more.calls["generate"] == more.calls["refine"] == 0
    assert again.summary["outputs"]["rows"]["pointwise-test"] == sum(5 if i != "im0" else 4 for i in test_images) * 3
    assert outputs["rows"]["pointwise-test"] == len(point["test"]) and outputs["rows"]["pairwise-test"] == len(pairs["test"])
    assert outputs["test_layout"] == "released"
    # The CLI defaults: a fifth of the images, the released layout, the counts printed.
    monkeypatch.setitem(BACKENDS, "scripted", (__name__, "Scripted", "dev"))
    argv = ["bootstrap", "--generator", "g", "--generator-backend", "scripted", "--evaluator", "g",
            "--evaluator-backend", "scripted", "--data", str(data), "--out", str(tmp_path / "cli"),
            "--paraphrases", "1", "--no-cache"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["settings"]["test_fraction"] == 0.2 and summary["outputs"]["test_layout"] == "released"
    n_test = summary["outputs"]["images"]["test"]
    assert summary["outputs"]["rows"]["pointwise-test"] == 5 * n_test
    assert summary["outputs"]["rows"]["pairwise-test"] == 10 * n_test
    assert f"images {10 - n_test} train / {n_test} test (test layout released)" in printed
