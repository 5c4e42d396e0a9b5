"""The authors' prompt files for the released DeepfakeJudge judges, fetched, never shipped.

The released judges were trained on the authors' prompt text, which carries no licence, so this
project cannot contain it. `official_template(kind)` finds the file, in this order:

1. an explicit path (`--template PATH`);
2. the folder named by `$DFJ_OFFICIAL_PROMPTS`, laid out like the official repository
   (`pointwise/prompt.txt`, `pairwise/prompt.txt`);
3. the user cache (`$XDG_CACHE_HOME/deepfakejudge/official-prompts/<commit>/<kind>/prompt.txt`);
4. a download of the raw file from the official GitHub repository at a pinned commit, kept in
   the cache.

Every source must have the pinned SHA-256 of the raw file, except an explicit path, which is
then recorded as a non-official template. The text is read as the official inference scripts
read it, in Python's text mode (CRLF -> LF). With no copy anywhere and no network, a released
judge is refused with `OfficialPromptMissing`: never judged silently with another prompt.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import InputError
from ..runtime import user_cache_dir
from . import template as core
from .template import Kind, Template, load_template, template_text

REPOSITORY = "KjAeRsTuIsK/DeepfakeJudge"
COMMIT = "ef7046374ed66583acc2a11fee99471febd761bd"
FILES: dict[str, str] = {"pointwise": "pointwise/prompt.txt", "pairwise": "pairwise/prompt.txt"}
# The SHA-256 of the raw files at COMMIT (CRLF line ends, as stored in the repository) is
# `template.PINNED_SHA256`: any loaded file with that hash is marked official.
RELEASED_JUDGES: dict[str, Kind] = {
    f"MBZUAI/Qwen-2.5-VL-Instruct-{size}-{title}-DFJ": kind  # type: ignore[misc]
    for size in ("3B", "7B")
    for title, kind in (("Pointwise", "pointwise"), ("Pairwise", "pairwise"))
}
FOLDER_ENV = "DFJ_OFFICIAL_PROMPTS"
# Where the raw files are downloaded from: `<base>/<kind>/prompt.txt`. Overridable so that a
# mirror (or a test's local server) can stand in for GitHub.
URL_ENV = "DFJ_OFFICIAL_PROMPTS_URL"
BASE_URL = f"https://raw.githubusercontent.com/{REPOSITORY}/{COMMIT}"
DOWNLOAD_TIMEOUT = 15.0
NAME = "official"


class OfficialPromptMissing(InputError):
    """The authors' prompt file is needed and no valid copy can be found or downloaded."""


def released_kind(model_or_path: str | Path | None) -> Kind | None:
    """The kind of released DFJ judge `model_or_path` is, or None (see `released_judge`)."""
    name = released_judge(model_or_path)
    return None if name is None else RELEASED_JUDGES[name]


def released_judge(model_or_path: str | Path | None) -> str | None:
    """The hub id of the released DFJ judge `model_or_path` is or descends from, or None.

    Recognised: a released hub id; a local copy of one (a folder named after it, or a Hugging
    Face cache snapshot `models--MBZUAI--<name>/snapshots/<rev>`); a LoRA adapter folder whose
    base is one; a `dfj train` adapter or `dfj export` folder whose record names one.
    """
    if model_or_path is None:
        return None
    text = str(model_or_path).strip().rstrip("/\\")
    by_id = {name.lower(): name for name in RELEASED_JUDGES}
    if text.lower() in by_id:
        return by_id[text.lower()]
    path = Path(text).expanduser()
    if not path.is_dir():
        return None
    by_folder = {name.split("/", 1)[1].lower(): name for name in RELEASED_JUDGES}
    names = [path.name] + ([path.parent.parent.name] if path.parent.name == "snapshots" else [])
    for part in names:
        part = part.lower().removeprefix("models--mbzuai--")
        if part in by_folder:
            return by_folder[part]
    records = (("dfj_train.json", ("released_judge", "base")), ("dfj_export.json", ("released_judge", "base")),
               ("adapter_config.json", ("base_model_name_or_path",)))
    for file, keys in records:
        record = _json(path / file)
        for key in keys:
            value = record.get(key)
            if isinstance(value, str) and value.lower() in by_id:
                return by_id[value.lower()]
    return None


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def cache_dir() -> Path:
    """Where downloaded prompt files are kept: beside the request cache, per pinned commit."""
    return user_cache_dir() / "official-prompts" / COMMIT


def official_template(kind: Kind, path: str | Path | None = None) -> Template:
    """The authors' `kind` prompt as a Template with `official=True` (see the module docstring).

    With `path`, that file is used whatever it holds: a file that is not the pinned one gives a
    template with `official=False` (the caller asked for it explicitly).
    """
    if kind not in FILES:
        raise ValueError(f"the official prompts exist for pointwise and pairwise judges only, not {kind!r}")
    if path is not None:
        return load_template(path, kind)  # official only if it has the pinned hash
    tried = []
    folder = os.environ.get(FOLDER_ENV)
    if folder:
        candidate = Path(folder).expanduser() / FILES[kind]
        if candidate.is_file():
            raw = _read(candidate, f"${FOLDER_ENV} file {candidate}")
            _check(kind, raw, f"${FOLDER_ENV} file {candidate}")
            return _template(kind, raw, _name(kind), official=True)
        tried.append(f"${FOLDER_ENV} has no {FILES[kind]} ({candidate})")
    cached = cache_dir() / FILES[kind]
    if cached.is_file():
        raw = cached.read_bytes()
        if _sha(raw) == core.PINNED_SHA256[kind]:
            return _template(kind, raw, _name(kind), official=True)
        tried.append(f"the cached copy {cached} is damaged (sha256 differs; delete it)")
    raw = _download(kind, tried)
    _check(kind, raw, f"the download from {_url(kind)}")
    _store(cached, raw)
    return _template(kind, raw, _name(kind), official=True)


def _name(kind: str) -> str:
    return f"{NAME}:{REPOSITORY}@{COMMIT[:12]}/{FILES[kind]}"


def _sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _url(kind: str) -> str:
    return (os.environ.get(URL_ENV) or BASE_URL).rstrip("/") + "/" + FILES[kind]


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise OfficialPromptMissing(f"{what}: cannot read the file ({exc.strerror})") from exc


def _check(kind: str, raw: bytes, what: str) -> None:
    got = _sha(raw)
    if got != core.PINNED_SHA256[kind]:
        raise OfficialPromptMissing(
            f"{what}: sha256 {got[:12]}… is not the authors' {kind} prompt at {REPOSITORY}@{COMMIT[:12]} "
            f"({core.PINNED_SHA256[kind][:12]}…); use the unmodified raw file (CRLF line ends), or pass it as "
            "--template PATH to use it anyway as a non-official template"
        )


def _template(kind: Kind, raw: bytes, name: str, official: bool) -> Template:
    return Template(kind=kind, text=template_text(raw, name), name=name, official=official)


def _download(kind: str, tried: list[str]) -> bytes:
    url = _url(kind)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:  # noqa: S310 - fixed https URL or the user's override
            return response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        tried.append(f"download from {url} failed ({reason})")
    raise OfficialPromptMissing(
        f"the authors' {kind} prompt is needed (a released DFJ judge, or --template official) but is not available: "
        + "; ".join(tried)
        + f". Supply it: put {FILES[kind]} from github.com/{REPOSITORY} at commit {COMMIT[:12]} in a folder and "
        f"set {FOLDER_ENV}=that folder, or pass --template PATH, or run once online (the file is then cached "
        f"in {cache_dir()})"
    )


def _store(path: Path, raw: bytes) -> None:
    """Keep a verified download; a cache that cannot be written only costs a download next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
            tmp.write(raw)
        os.replace(tmp.name, path)
    except OSError:
        pass
