"""Prompt templates: the project's own default text, loading of any template file (in text mode,
as the official scripts read theirs), the authors' prompts for the released judges (official.py),
safe filling (template.py).
"""

from __future__ import annotations

from pathlib import Path

from .official import official_template, released_kind
from .template import (
    DEFAULT_NAME,
    PLACEHOLDERS,
    SCORE_PREFIX,
    Kind,
    Template,
    default_template,
    load_template,
    template_text,
)

__all__ = [
    "DEFAULT_NAME",
    "PLACEHOLDERS",
    "SCORE_PREFIX",
    "Kind",
    "Template",
    "default_template",
    "load_template",
    "resolve_template",
    "template_text",
]


def resolve_template(
    path_or_name: str | Path | None, kind: Kind, *, model: str | None = None, adapter: str | None = None
) -> Template:
    """The template a command uses: a file path, "official" (the authors' prompt, see
    official.py) or "default" (the project's own); None means the authors' prompt when `model`
    (or `adapter`) is a released DFJ judge, else the project's own."""
    if path_or_name is None:
        released = released_kind(adapter) or released_kind(model)
        return official_template(kind) if released and kind in ("pointwise", "pairwise") else default_template(kind)
    if str(path_or_name) == "official":
        return official_template(kind)
    if str(path_or_name) in ("default", DEFAULT_NAME):
        return default_template(kind)
    return load_template(path_or_name, kind)
