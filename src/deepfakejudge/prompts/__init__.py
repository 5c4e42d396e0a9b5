"""Prompt templates: the project's own default text, loading of any template file, safe filling.

Templates use the released judges' placeholders. Only those named placeholders are replaced, in a
single pass: template files also contain literal braces (`{integer score from 1 to 5}`) that
`str.format` would choke on, and a candidate response that itself contains `{response_b}` must
not be substituted again.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

Kind = Literal[
    "pointwise", "pairwise", "detect",
    "bootstrap-generate", "bootstrap-refine", "bootstrap-paraphrase", "bootstrap-evaluate", "bootstrap-levels",
]

PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "pointwise": ("ground_truth_label", "candidate_response"),
    "pairwise": ("ground_truth_label", "response_a", "response_b"),
    # The detection prompt is the same for every image: the detector sees only the image.
    "detect": (),
    # `dfj bootstrap` roles (see bootstrap/prompts.py). The levels file is plain text, one
    # "N: description" line per quality level, and has no placeholders.
    "bootstrap-generate": (
        "ground_truth_label", "verdict", "level", "level_description", "artifacts", "gold_rationale",
    ),
    "bootstrap-refine": (
        "ground_truth_label", "verdict", "level", "level_description", "artifacts", "gold_rationale",
        "previous_explanation", "evaluator_score", "evaluator_feedback", "direction",
    ),
    "bootstrap-paraphrase": ("ground_truth_label", "verdict", "level", "level_description", "explanation", "variant"),
    "bootstrap-evaluate": ("ground_truth_label", "candidate_response", "artifacts", "gold_rationale"),
    "bootstrap-levels": (),
}
_KNOWN = sorted({name for names in PLACEHOLDERS.values() for name in names})
_PATTERN = re.compile(r"\{(" + "|".join(_KNOWN) + r")\}")

# Assistant text prefilled in score-only mode: the judge's output format up to the value, with an
# empty reasoning block so the value follows the same tokens it followed in training.
SCORE_PREFIX: dict[str, str] = {
    "pointwise": "<reasoning></reasoning>\n<score>",
    "pairwise": "<answer>",
    "detect": "<reasoning></reasoning> <answer>",
}


@dataclass(frozen=True)
class Template:
    kind: Kind
    text: str
    name: str  # "default" or the file path it came from

    @property
    def sha256(self) -> str:
        """Content hash recorded in every result, so scores are traceable to the exact prompt."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def fill(self, **values: str) -> str:
        expected = PLACEHOLDERS[self.kind]
        missing = [k for k in expected if k not in values]
        unknown = [k for k in values if k not in expected]
        if missing or unknown:
            raise ValueError(
                f"template '{self.name}' ({self.kind}) needs values for {list(expected)}; "
                f"missing {missing}, unexpected {unknown}"
            )
        return _PATTERN.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), self.text)

    def provenance(self) -> dict[str, str]:
        return {"template": self.name, "template_sha256": self.sha256}


def default_template(kind: Kind) -> Template:
    if kind not in PLACEHOLDERS:
        raise ValueError(f"template kind must be one of {sorted(PLACEHOLDERS)}, got {kind!r}")
    text = resources.files(__package__).joinpath("templates", f"{kind}.txt").read_text("utf-8")
    return Template(kind=kind, text=text, name="default")


def load_template(path: str | Path, kind: Kind) -> Template:
    """Read a template file exactly as it is (CRLF kept: it is part of what the model saw)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"--template {path}: cannot read the file ({exc.strerror})") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"--template {path}: not UTF-8 text (byte {exc.start})") from exc
    missing = [name for name in PLACEHOLDERS[kind] if "{" + name + "}" not in text]
    if missing:
        raise ValueError(
            f"--template {path}: a {kind} template must contain "
            + ", ".join("{" + n + "}" for n in PLACEHOLDERS[kind])
            + f"; missing {', '.join('{' + n + '}' for n in missing)}"
        )
    return Template(kind=kind, text=text, name=str(path))


def resolve_template(path: str | Path | None, kind: Kind) -> Template:
    return default_template(kind) if path is None else load_template(path, kind)
