"""Official ms-swift rows (`messages` + `images`) -> `Sample`.

The released DFJ-Meta rows hold the judge prompt already filled in. The label and the
response(s) are recovered by matching the user turn against a template turned into a pattern
(literal text kept, named placeholders captured); line endings are normalised on both sides
because the official template files are CRLF while JSON rows usually are not.
The assistant turn is the training target: its score or choice becomes the gold `score` /
`preferred`, and the full text is kept in `extra["target"]`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from ..parsing import parse_choice, parse_score
from ..prompts import PLACEHOLDERS, Template, default_template
from ..records import LABELS, Sample
from .canonical import InputError, parse_id

_IMAGE_TAG = "<image>"


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


@lru_cache(maxsize=32)
def _pattern(text: str, kind: str) -> re.Pattern[str]:
    names = PLACEHOLDERS[kind]
    splitter = re.compile(r"\{(" + "|".join(names) + r")\}")
    parts, pos, seen = [], 0, set()
    for m in splitter.finditer(text):
        parts.append(re.escape(text[pos : m.start()]))
        name = m.group(1)
        # A placeholder used twice must match the same text twice.
        parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>.*?)")
        seen.add(name)
        pos = m.end()
    parts.append(re.escape(text[pos:]))
    return re.compile("".join(parts), re.DOTALL)


def _match(user: str, templates: tuple[Template, ...]) -> tuple[Template, dict[str, str]] | None:
    for template in templates:
        m = _pattern(_normalise(template.text), template.kind).fullmatch(user)
        if m:
            return template, {k: v.strip() for k, v in m.groupdict().items()}
    return None


def _turn(messages: list[Any], role: str) -> str | None:
    for message in messages:
        if isinstance(message, dict) and message.get("role") == role:
            content = message.get("content")
            if not isinstance(content, str):
                raise InputError(f"messages[{role}].content", "must be a string (ms-swift text form)")
            return content
    return None


def _image_path(obj: Mapping[str, Any]) -> str:
    images = obj.get("images")
    if not isinstance(images, list) or len(images) != 1:
        raise InputError("images", f"must be a list with exactly one image path, got {images!r}")
    item = images[0]
    path = item.get("path") if isinstance(item, dict) else item
    if not isinstance(path, str) or not path.strip():
        raise InputError("images[0]", f"must be a path relative to the split folder, got {item!r}")
    return path


def sample_from_msswift(
    obj: Mapping[str, Any],
    base_dir: Path,
    where: str,
    lineno: int,
    templates: tuple[Template, ...] = (),
) -> Sample:
    messages = obj.get("messages")
    if not isinstance(messages, list):
        raise InputError("messages", "must be a list of {role, content} objects")
    user = _turn(messages, "user")
    if user is None:
        raise InputError("messages", "has no user turn")
    user = _normalise(user.replace(_IMAGE_TAG, "", 1))
    candidates = templates + (default_template("pointwise"), default_template("pairwise"))
    found = _match(user, candidates)
    if found is None:
        raise InputError(
            "messages[user].content",
            "does not match any known judge template; pass the template the data was built "
            "with (--template PATH)",
        )
    template, values = found
    label = values["ground_truth_label"].lower()
    if label not in LABELS:
        raise InputError("label", f"{values['ground_truth_label']!r} is not one of {', '.join(LABELS)}")
    target = _turn(messages, "assistant")
    image = _image_path(obj)
    extra = {k: v for k, v in obj.items() if k not in ("id", "messages", "images")}
    extra["template_sha256"] = template.sha256
    if target is not None:
        extra["target"] = target
    common = dict(
        id=parse_id(obj) if "id" in obj else f"{Path(where.rsplit(':', 1)[0]).stem}-{lineno}",
        image=(base_dir / image).resolve(),
        label=label,
        extra=extra,
        where=where,
    )
    if template.kind == "pointwise":
        return Sample(response=values["candidate_response"], score=parse_score(target), **common)
    return Sample(
        response_a=values["response_a"],
        response_b=values["response_b"],
        preferred=parse_choice(target),
        **common,
    )
