"""Official ms-swift rows (`messages` + `images`) -> `Sample`.

The released DFJ-Meta rows hold the judge prompt already filled in: that user text, minus the
`<image>` marker and otherwise exactly as written (line endings included), is what the model saw
in training, so it is kept as `Sample.prompt` and judges send it as it is. The label and the
response(s) are recovered for metadata by matching the user turn against a template turned into
a pattern (literal text kept, named placeholders captured, any line ending accepted where the
template has one). For a pairwise row the match also gives `Sample.prompt_swapped`: the same
text with the two responses exchanged, for the judge's second order.
A row whose prompt matches no template is an error unless the caller loads rows `verbatim`
(judging and training, which need only the prompt and the target).
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
from .canonical import InputError, image_location, parse_id
from .urls import is_url

_IMAGE_TAG = "<image>"


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def _literal(text: str) -> str:
    # Any line ending where the template has one: rows and template files often differ in that.
    return r"\r?\n".join(re.escape(line) for line in text.split("\n"))


@lru_cache(maxsize=32)
def _pattern(text: str, kind: str) -> re.Pattern[str]:
    names = PLACEHOLDERS[kind]
    splitter = re.compile(r"\{(" + "|".join(names) + r")\}")
    parts, pos, seen = [r"\s*"], 0, set()
    for m in splitter.finditer(text):
        parts.append(_literal(text[pos : m.start()]))
        name = m.group(1)
        # A placeholder used twice must match the same text twice.
        parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>.*?)")
        seen.add(name)
        pos = m.end()
    parts.append(_literal(text[pos:]) + r"\s*")
    return re.compile("".join(parts), re.DOTALL)


def _match(user: str, templates: tuple[Template, ...]) -> tuple[Template, re.Match[str]] | None:
    for template in templates:
        m = _pattern(_normalise(template.text), template.kind).fullmatch(user)
        if m:
            return template, m
    return None


def _swapped(user: str, m: re.Match[str]) -> str | None:
    """`user` with the texts of response_a and response_b exchanged, everything else as written."""
    if "response_a" not in m.groupdict():
        return None
    (a0, a1), (b0, b1) = sorted((m.span("response_a"), m.span("response_b")))
    return user[:a0] + user[b0:b1] + user[a1:b0] + user[a0:a1] + user[b1:]


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
        raise InputError("images[0]", f"must be a path relative to the split folder or a URL, got {item!r}")
    return path


def sample_from_msswift(
    obj: Mapping[str, Any],
    base_dir: Path,
    where: str,
    lineno: int,
    templates: tuple[Template, ...] = (),
    verbatim: bool = False,
) -> Sample:
    messages = obj.get("messages")
    if not isinstance(messages, list):
        raise InputError("messages", "must be a list of {role, content} objects")
    user = _turn(messages, "user")
    if user is None:
        raise InputError("messages", "has no user turn")
    prompt = user.replace(_IMAGE_TAG, "", 1)  # what the model saw, as written
    candidates = templates + (default_template("pointwise"), default_template("pairwise"))
    found = _match(prompt, candidates)
    if found is None and not verbatim:
        raise InputError(
            "messages[user].content",
            "does not match any known judge template: dfj judge and dfj train use such a row as "
            "written, other commands need the template the data was built with (--template PATH, "
            "or --template official for the released DFJ-Meta)",
        )
    target = _turn(messages, "assistant")
    image = image_location(_image_path(obj), base_dir, where, "images[0]")
    extra = {k: v for k, v in obj.items() if k not in ("id", "messages", "images")}
    if target is not None:
        extra["target"] = target
    common = dict(
        id=parse_id(obj) if "id" in obj else f"{Path(where.rsplit(':', 1)[0]).stem}-{lineno}",
        image=image if is_url(image) else image.resolve(),
        extra=extra,
        where=where,
        prompt=prompt,
    )
    if found is None:
        # Label and responses unknown: the row is judged (or trained on) as written only.
        return Sample(label=None, score=parse_score(target), preferred=parse_choice(target), **common)  # type: ignore[arg-type]
    template, m = found
    values = {k: v.strip() for k, v in m.groupdict().items()}
    label = values["ground_truth_label"].lower()
    if label not in LABELS:
        raise InputError("label", f"{values['ground_truth_label']!r} is not one of {', '.join(LABELS)}")
    extra["template_sha256"] = template.sha256
    common["label"] = label
    if template.kind == "pointwise":
        return Sample(response=values["candidate_response"], score=parse_score(target), **common)
    return Sample(
        response_a=values["response_a"],
        response_b=values["response_b"],
        preferred=parse_choice(target),
        prompt_swapped=_swapped(prompt, m),
        **common,
    )
