"""Templates: the record, safe filling, the project's own default text and loading of any
template file (in text mode, as the official scripts read theirs). The package `__init__`
re-exports all of it; `official.py` (the authors' prompts) builds on it.

Templates use the released judges' placeholders. Only those named placeholders are replaced, in a
single pass: template files also contain literal braces (`{integer score from 1 to 5}`) that
`str.format` would choke on, and a candidate response that itself contains `{response_b}` must
not be substituted again.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

from ..errors import InputError

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


# SHA-256 of the authors' raw prompt files of the released judges (official.py says where they come
# from and fetches them). Here because loading any file marks it official by them.
PINNED_SHA256: dict[str, str] = {
    "pointwise": "0b33ef73c8cda74891bab9548a32f76ef8edc2ca5d26a1527c0e6727b72e172b",
    "pairwise": "046059c0b12fb79224af77a74216886b495e78723eb48e24d492ef5046b9390c",
}

DEFAULT_NAME = "dfj-default"  # the project's own rubric, the default for models that are not released judges


@dataclass(frozen=True)
class Template:
    kind: Kind
    text: str
    name: str  # DEFAULT_NAME, "official:…" (see official.py) or the file path it came from
    # True only for the authors' pinned prompt file of a released judge (see official.py).
    official: bool = False

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

    def provenance(self) -> dict[str, str | bool]:
        return {"template": self.name, "template_sha256": self.sha256, "template_official": self.official}


@lru_cache(maxsize=None)  # a packaged file, read once: ms-swift loading asks for it per row
def default_template(kind: Kind) -> Template:
    if kind not in PLACEHOLDERS:
        raise ValueError(f"template kind must be one of {sorted(PLACEHOLDERS)}, got {kind!r}")
    text = resources.files(__package__).joinpath("templates", f"{kind}.txt").read_text("utf-8")
    return Template(kind=kind, text=text, name=DEFAULT_NAME)


def template_text(raw: bytes, name: str) -> str:
    """The text of a template file as Python's text mode reads it (`open(path).read()`): UTF-8,
    CRLF and CR turned into LF. The official inference scripts read their prompt file this way,
    so this is the text the released judges were run with."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"--template {name}: not UTF-8 text (byte {exc.start})") from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")


def load_template(path: str | Path, kind: Kind) -> Template:
    """Read a template file in text mode (line ends become LF, as `open(path).read()` gives).

    The file is the authors' official prompt when its bytes have the pinned hash (see
    official.py); `Template.official` says so."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"--template {path}: cannot read the file ({exc.strerror})") from exc
    text = template_text(raw, str(path))
    missing = [name for name in PLACEHOLDERS[kind] if "{" + name + "}" not in text]
    if missing:
        raise InputError(
            f"--template {path}: a {kind} template must contain "
            + ", ".join("{" + n + "}" for n in PLACEHOLDERS[kind])
            + f"; missing {', '.join('{' + n + '}' for n in missing)}"
        )
    official = PINNED_SHA256.get(kind) == hashlib.sha256(raw).hexdigest()
    return Template(kind=kind, text=text, name=str(path), official=official)
