"""Location words in an explanation, checked against annotated boxes.

Only phrases that place something in the image frame are read: a location after "at", "in",
"on", "near" or "along" ("at lower right", "in the upper-left corner", "on the right"), and
"left/right of centre". Object-relative phrases are skipped: "its right edge", "the right leg",
"the right side of the face" (an "of" naming anything but the image). Directions ("casts its
shadow to the lower left", "light from the upper left") are not locations and are skipped too.

A location is consistent with a box when the box centre lies in the named part of the image,
with a tolerance of a tenth of the image on each side: left = centre x < 0.6 W, right > 0.4 W,
horizontal centre 0.25–0.75 W (likewise vertically for upper/top, lower/bottom).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..records import Box

_H = r"(?:left|right)"
_V = r"(?:upper|top|lower|bottom)"
_C = r"(?:centre|center|middle)"
_PART = r"(?:[\s-]+(?:corner|edge|side|half|part|area|region|third|quadrant))?"
_FRAME = {"image", "picture", "photo", "photograph", "frame", "scene", "shot"}
_PHRASE = re.compile(
    rf"\b(?:at|in|on|near|along)\s+(?:the\s+)?(?:very\s+|far\s+)?"
    rf"(?P<loc>{_V}[\s-]*(?:{_H}|{_C})?|{_C}[\s-]+{_H}|{_H}(?:[\s-]+of[\s-]+{_C})?|{_C})"
    rf"(?P<part>{_PART})(?:\s+of\s+(?:the\s+)?(?P<ref>[a-z]+))?"
    rf"|\b(?P<loc2>{_H}\s+of\s+{_C})\b",
    re.IGNORECASE,
)
TOLERANCE = 0.1


@dataclass(frozen=True)
class Location:
    """A located phrase: horizontal in left/right/centre/None, vertical in top/bottom/centre/None."""

    phrase: str
    horizontal: str | None
    vertical: str | None

    def fits(self, box: Box, width: float, height: float) -> bool:
        cx = (box.x0 + box.x1) / 2 / width
        cy = (box.y0 + box.y1) / 2 / height
        return _fits(self.horizontal, cx) and _fits(self.vertical, cy)


def _fits(where: str | None, c: float) -> bool:
    if where is None:
        return True
    if where in ("left", "top"):
        return c < 0.5 + TOLERANCE
    if where in ("right", "bottom"):
        return c > 0.5 - TOLERANCE
    return 0.25 <= c <= 0.75  # centre


def _parse(loc: str) -> tuple[str | None, str | None]:
    text = loc.lower()
    h = "left" if "left" in text else "right" if "right" in text else None
    v = "top" if re.search(r"upper|top", text) else "bottom" if re.search(r"lower|bottom", text) else None
    centre = re.search(_C, text) is not None
    if " of " in f" {text} " or re.search(r"of[\s-]+" + _C, text):
        return h, None  # "right of centre": on that side, no vertical claim
    if centre and h is None and v is None:
        return "centre", "centre"
    if centre and v is not None and h is None:
        return "centre", v  # "upper centre"
    return h, v  # "centre-right" reads as right


def locations(sentence: str) -> list[Location]:
    out = []
    for m in _PHRASE.finditer(sentence):
        if m.group("loc2"):
            h, v = _parse(m.group("loc2"))
            out.append(Location(m.group(0), h, v))
            continue
        ref = (m.group("ref") or "").lower()
        if ref and ref not in _FRAME:
            continue  # "on the right side of the tripod": relative to an object
        h, v = _parse(m.group("loc"))
        out.append(Location(m.group(0).strip(), h, v))
    return out
