"""Images named by URL (`s3://…`, `gs://…`, `http(s)://…`, `memory://…`, any protocol fsspec knows).

A URL is kept as a URL, never resolved against the data file's folder, and read with fsspec by the
process that runs the model (with `--engine ray`, each replica), so images never travel through
the driver. A URL image is a `upath.UPath` (universal-pathlib, the maintained Path API over fsspec)
rather than a record of our own: what the code does with `sample.image` (`.name`, `str()`,
hashing and equality for caches and counts, `.resolve()`) is the Path API, which UPath keeps for
URLs. Only what needs a local file (`os.path.realpath`, `Image.open(path)`, a trainer reading
files) asks `is_url` first. `file://` URLs are local paths and become plain `Path`s, confined to the
data folder like any other path.

A URL whose protocol no installed package serves fails the whole load, once, before a model is
loaded: 41K rows of the same missing package would say nothing more than one line.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path, PurePath
from typing import TYPE_CHECKING
from urllib.parse import urlsplit
from urllib.request import url2pathname

from ..errors import InputError, MissingExtra

if TYPE_CHECKING:
    from upath import UPath

EXTRA = "remote-images"
# A scheme of two characters at least, so that a Windows drive (C:/x.png) is never a URL.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)://")
# Packages our extra installs: a protocol missing one of these needs the extra, not a package of its own.
_OURS = ("upath", "aiohttp", "yarl", "fsspec")


def url_protocol(text: str) -> str | None:
    """The protocol of `text` when it is a URL (`s3` for `s3://b/x.png`), else None (a path)."""
    m = _SCHEME.match(text)
    return m.group(1).lower() if m else None


def is_url(image: object) -> bool:
    """Whether a sample's image is a URL (a `UPath`) rather than a local path."""
    return not isinstance(image, PurePath)


def local_file(text: str) -> Path | None:
    """The local path a `file://` URL names, or None when it names another host."""
    parts = urlsplit(text)
    return Path(url2pathname(parts.path)) if parts.netloc in ("", "localhost") else None


def remote_image(text: str, protocol: str, where: str, field: str = "image") -> UPath:
    """`text` as a `UPath`, or `MissingExtra` / `InputError` (not a row error: the whole load stops)
    when no installed package reads `protocol`."""
    try:
        from upath import UPath
    except ModuleNotFoundError:
        raise MissingExtra(f"{where}: field '{field}': {text}: reading images from URLs needs universal-pathlib: "
                           f"pip install 'deepfakejudge[{EXTRA}]'") from None
    _check_protocol(protocol, text, f"{where}: field '{field}'")
    return UPath(text)


def _check_protocol(protocol: str, text: str, where: str) -> None:
    # `where` is "file:line: field 'image'": the error names the first row with the protocol.
    import fsspec

    try:
        _filesystem_class(protocol)
    except ImportError as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, ImportError) else exc
        module = (getattr(cause, "name", None) or "").split(".")[0]
        fix = (f"pip install 'deepfakejudge[{EXTRA}]'" if module in _OURS
               else f"pip install {module}" if module else "install the package it names")
        raise MissingExtra(f"{where}: {text}: fsspec cannot read {protocol}:// URLs without "
                           f"{module or 'its filesystem package'} ({exc}): {fix}") from None
    except ValueError:
        known = ", ".join(sorted(fsspec.available_protocols()))
        raise InputError(f"{where}: {text}: no filesystem is known for {protocol}:// (fsspec knows "
                         f"{known}): fix the URL, or install the package that provides the protocol") from None


@lru_cache(maxsize=None)
def _filesystem_class(protocol: str) -> type:
    # Imports the filesystem's package once per protocol (s3fs, gcsfs, aiohttp for http), so a
    # missing one is found at load time, not at the first image.
    import fsspec

    return fsspec.get_filesystem_class(protocol)
