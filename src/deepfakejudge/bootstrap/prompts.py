"""The bootstrap roles' prompts: one template file per role, filled from an annotated sample.

Roles: `generate` (write an explanation at quality level k), `refine` (revise it with the
evaluator's feedback), `paraphrase` (reword an accepted one), `evaluate` (rate 1..5 against the
image and the annotations) and `levels` (what each level means, mirroring the judge's rubric).
The project's own text lives in `prompts/templates/bootstrap-*.txt`; any role can be replaced by a
file (`--prompt ROLE=PATH`). Every template's sha256 is recorded in the run's settings, so a
resumed run refuses to mix prompts.

The evaluator is either the generic, reference-guided `evaluate` prompt or a DFJ pointwise judge
template (`--evaluator-template`): a trained judge sees only the label and the candidate, as at
inference, and its `<reasoning>` becomes the feedback.

The rubric is the contract (`LEVEL_VERDICTS`, the levels file, the evaluator's scale, the docs):
levels 3..5 argue for the true class (3 may sound unsure), levels 1 and 2 for the wrong one (2
hedged and unsure, 1 confident). The verdict is fixed by the level, not left to the generator:
the generator writes only the reasoning and `parse_explanation` attaches `<answer>verdict</answer>`,
so every record follows the detector contract `<reasoning>…</reasoning> <answer>real|fake</answer>`.

Level 5 is the gold rationale itself by default (`gold_response`): the annotators' text with the
annotated verdict, rated and paraphrased like the others but never generated; levels 4..1 are
degradations of it (the generator sees it as the reference).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from ..errors import InputError, UsageError
from ..parsing import parse_prediction, parse_reasoning
from ..prompts import (
    SCORE_PREFIX,
    Template,
    default_template,
    load_template,
    resolve_template,
)
from ..records import Sample

PROMPT_VERSION = "bootstrap/2"  # 2: wrong verdict at level 2, gold level 5
ROLES: tuple[str, ...] = ("generate", "refine", "paraphrase", "evaluate", "levels")
LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)
EvaluatorKind = Literal["reference", "judge"]

_TAG = re.compile(r"<\s*/?\s*(reasoning|answer|score)\s*>", re.IGNORECASE)
_LEVEL_LINE = re.compile(r"^\s*([1-5])\s*:\s*(\S.*)$")


# Whether an explanation at each level argues for the true class. The rubric: 5 and 4 right; 3
# right, sometimes in an unsure tone; 2 wrong, sometimes in an unsure tone; 1 wrong, sometimes in
# a confident tone.
LEVEL_VERDICTS: dict[int, bool] = {5: True, 4: True, 3: True, 2: False, 1: False}


def verdict(label: str, level: int) -> str:
    """The verdict an explanation at `level` argues for: the true one at levels 3..5, the wrong
    one at levels 1 and 2 (`LEVEL_VERDICTS`)."""
    true = "real" if label == "real" else "fake"  # "edited" is a fake verdict
    if LEVEL_VERDICTS[level]:
        return true
    return "fake" if true == "real" else "real"


def gold_response(sample: Sample) -> str:
    """The level-5 candidate made from the annotation: the gold rationale as the reasoning and the
    annotated verdict, in the detector contract (tags in the rationale are neutralised)."""
    body = strip_tags(sample.rationale or "")
    return f"<reasoning>{body}</reasoning> <answer>{verdict(sample.label, 5)}</answer>"


def parse_levels(template: Template) -> dict[int, str]:
    levels: dict[int, str] = {}
    for line in template.text.splitlines():
        if not line.strip():
            continue
        m = _LEVEL_LINE.match(line)
        if m is None:
            raise InputError(f"--prompt levels={template.name}: line {line[:60]!r} is not 'N: description' (N in 1..5)")
        levels[int(m.group(1))] = m.group(2).strip()
    missing = [k for k in LEVELS if k not in levels]
    if missing:
        raise InputError(f"--prompt levels={template.name}: no description for level(s) {missing}")
    return levels


def parse_prompt_overrides(items: list[str]) -> dict[str, str]:
    """`--prompt ROLE=PATH` values -> {role: path}."""
    out: dict[str, str] = {}
    for item in items:
        role, sep, path = item.partition("=")
        if not sep or role not in ROLES or not path:
            raise UsageError(f"--prompt {item!r}: expected ROLE=PATH with ROLE one of {', '.join(ROLES)}")
        out[role] = path
    return out


def _where(box: list[float], size: tuple[int, int] | None) -> str:
    if size is None:
        return ""
    cx, cy = (box[0] + box[2]) / 2 / size[0], (box[1] + box[3]) / 2 / size[1]
    row = "upper" if cy < 1 / 3 else "lower" if cy > 2 / 3 else "middle"
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "centre"
    return " (" + ("centre" if (row, col) == ("middle", "centre") else f"{row} {col}") + ")"


def describe_artifacts(sample: Sample, size: tuple[int, int] | None) -> str:
    """One line per annotated artifact: category, box with a coarse location, expression."""
    if not sample.artifacts:
        return "(none: nothing in the image was marked as manipulated)"
    head = f"(image is {size[0]}x{size[1]} pixels)\n" if size else ""
    lines = []
    for a in sample.artifacts:
        box = "" if a.bbox is None else " at " + str([round(v) for v in a.bbox.as_list()]) + _where(a.bbox.as_list(), size)
        lines.append(f"- {a.category}{box}" + (f": {a.expression}" if a.expression else ""))
    return head + "\n".join(lines)


@dataclass(frozen=True)
class Explanation:
    """A generator output read into a candidate response, or why it cannot be used."""

    response: str | None
    malformed: str | None


def parse_explanation(text: str, label: str, level: int) -> Explanation:
    """The generator's reasoning wrapped as `<reasoning>…</reasoning> <answer>verdict</answer>`.

    Accepted: a closed `<reasoning>` block, or plain prose with no tags at all. Malformed: empty
    text, stray or unclosed tags, tags inside the reasoning, or an `<answer>` that contradicts
    the level's verdict.
    """
    body = parse_reasoning(text)
    if body is None:
        stripped = text.strip()
        if _TAG.search(stripped):
            return Explanation(None, "no closed <reasoning>…</reasoning> block")
        body = stripped
    if not body:
        return Explanation(None, "empty explanation")
    if _TAG.search(body):
        return Explanation(None, "tags inside the reasoning")
    wanted = verdict(label, level)
    said = parse_prediction(text)
    if said is not None and said != wanted:
        return Explanation(None, f"answers {said!r} but level {level} argues for {wanted!r}")
    return Explanation(f"<reasoning>{body}</reasoning> <answer>{wanted}</answer>", None)


def strip_tags(text: str) -> str:
    """Feedback text made safe to embed in a prompt or a judge target."""
    return _TAG.sub(" ", text).strip()


@dataclass(frozen=True)
class RolePrompts:
    generate: Template
    refine: Template
    paraphrase: Template
    evaluate: Template  # kind "bootstrap-evaluate" (reference) or "pointwise" (a DFJ judge)
    levels: Template

    @classmethod
    def load(cls, overrides: dict[str, str] | None = None, evaluator_template: str | Template | None = None) -> "RolePrompts":
        """The project's templates, with `overrides` {role: path} and, for a DFJ judge as the
        evaluator, its pointwise template (a path, "official" for the authors' prompt of the released
        judges, "default" for the project's own, or a Template)."""
        overrides = overrides or {}
        found = {}
        for role in ROLES:
            kind = f"bootstrap-{role}"
            found[role] = load_template(overrides[role], kind) if role in overrides else default_template(kind)  # type: ignore[arg-type]
        if evaluator_template is not None:
            if "evaluate" in overrides:
                raise UsageError("--evaluator-template and --prompt evaluate=PATH: give one evaluator prompt, not both")
            found["evaluate"] = (
                evaluator_template if isinstance(evaluator_template, Template)
                else resolve_template(evaluator_template, "pointwise")  # a path, "official" or "default"
            )
        prompts = cls(**found)
        parse_levels(prompts.levels)  # a bad levels file fails before any call
        return prompts

    @property
    def evaluator_kind(self) -> EvaluatorKind:
        return "judge" if self.evaluate.kind == "pointwise" else "reference"

    @cached_property
    def level_text(self) -> dict[int, str]:
        return parse_levels(self.levels)

    def provenance(self) -> dict[str, object]:
        return {
            "version": PROMPT_VERSION,
            "evaluator_kind": self.evaluator_kind,
            **{role: {"template": t.name, "sha256": t.sha256} for role, t in self._items()},
        }

    def _items(self) -> list[tuple[str, Template]]:
        return [(role, getattr(self, role)) for role in ROLES]

    # -- filling ---------------------------------------------------------------------------------

    def _common(self, sample: Sample, level: int, size: tuple[int, int] | None) -> dict[str, str]:
        return {
            "ground_truth_label": sample.label,
            "verdict": verdict(sample.label, level),
            "level": str(level),
            "level_description": self.level_text[level],
            "artifacts": describe_artifacts(sample, size),
            "gold_rationale": (sample.rationale or "").strip(),
        }

    def generate_text(self, sample: Sample, level: int, size: tuple[int, int] | None) -> str:
        return self.generate.fill(**self._common(sample, level, size))

    def refine_text(self, sample: Sample, level: int, size: tuple[int, int] | None, previous: str,
                    score: int, feedback: str | None) -> str:
        return self.refine.fill(
            **self._common(sample, level, size),
            previous_explanation=previous,
            evaluator_score=str(score),
            evaluator_feedback=strip_tags(feedback) if feedback and feedback.strip() else "(no justification given)",
            direction="better" if score > level else "worse",
        )

    def paraphrase_text(self, sample: Sample, level: int, explanation: str, variant: int) -> str:
        return self.paraphrase.fill(
            ground_truth_label=sample.label,
            verdict=verdict(sample.label, level),
            level=str(level),
            level_description=self.level_text[level],
            explanation=explanation,
            variant=str(variant),
        )

    def evaluate_text(self, sample: Sample, candidate: str, size: tuple[int, int] | None) -> str:
        if self.evaluator_kind == "judge":
            # Exactly what PointwiseJudge.request fills: the judge sees what it saw in training.
            return self.evaluate.fill(ground_truth_label=sample.label, candidate_response=candidate)
        return self.evaluate.fill(
            ground_truth_label=sample.label,
            candidate_response=candidate,
            artifacts=describe_artifacts(sample, size),
            gold_rationale=(sample.rationale or "").strip(),
        )


SCORE_ONLY_PREFIX = SCORE_PREFIX["pointwise"]
