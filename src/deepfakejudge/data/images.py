"""Open a sample's image safely and check its annotations against it.

Everything that can be wrong with an image (missing, unreadable, truncated, over the
decompression-bomb limit, boxes outside it) raises `InputError(field="image"|"artifacts[i].bbox")`
so that the caller records one error row and goes on.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import threading
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from .. import errors
from ..records import Sample
from .canonical import InputError
from .urls import is_url

if TYPE_CHECKING:
    from upath import UPath

# PIL's own default: images larger than this are refused, not decoded (decompression bombs).
MAX_IMAGE_PIXELS = 89_478_485


@dataclass(frozen=True)
class LoadedImage:
    image: Image.Image  # RGB, fully decoded
    sha256: str  # of the file's bytes: identifies the content for caches
    data: bytes = field(default=b"", repr=False, compare=False)  # the file's bytes (remote backends send them)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def open_image(sample: Sample, max_image_pixels: int = MAX_IMAGE_PIXELS) -> LoadedImage:
    """The sample's image, decoded, its boxes checked against it: a local file or a URL (read with
    fsspec, `data/urls.py`). Anything wrong is an `InputError` for that row only."""
    loaded = load_image(sample.image, max_image_pixels)
    check_boxes(sample, loaded.image.size)
    return loaded


def load_image(path: Path | UPath, max_image_pixels: int = MAX_IMAGE_PIXELS) -> LoadedImage:
    """The image at `path` (a file or a URL), decoded, from the cache while the file or object is
    unchanged; `InputError` when it is missing or unreadable."""
    if is_url(path):
        version = remote_version(path)
    else:
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise InputError("image", f"file not found: {path}") from None
        except OSError as exc:
            raise InputError("image", f"cannot read {path}: {exc.strerror}") from None
        version = (stat.st_mtime_ns, stat.st_size)
    return _decode(path, version, max_image_pixels)


# Remote stores answer in tens of milliseconds a request: a pool's distinct URLs are read at once
# (I/O threads), each once however many rows name it (25 in DFJ-Meta).
URL_READERS = 16


def open_images(samples: Sequence[Sample], max_image_pixels: int = MAX_IMAGE_PIXELS) -> list[LoadedImage | InputError]:
    """`open_image` for each sample, in order, an `InputError` in place of a row's failure. Local
    files are opened one after another (they are cheap); the distinct URLs are read in parallel,
    one `info` and one GET each, and the decoded image is shared by the rows that name it."""
    remote = {str(s.image): s.image for s in samples if is_url(s.image)}
    fetched: dict[str, LoadedImage | InputError] = {}
    if remote:
        def fetch(url: Any) -> LoadedImage | InputError:
            try:
                return load_image(url, max_image_pixels)
            except InputError as exc:
                return exc

        with ThreadPoolExecutor(min(URL_READERS, len(remote)), thread_name_prefix="dfj-url") as pool:
            fetched = dict(zip(remote, pool.map(fetch, remote.values())))
    out: list[LoadedImage | InputError] = []
    for sample in samples:
        try:
            loaded = fetched[str(sample.image)] if is_url(sample.image) else load_image(sample.image, max_image_pixels)
            if isinstance(loaded, InputError):
                raise loaded
            check_boxes(sample, loaded.image.size)
            out.append(loaded)
        except InputError as exc:
            out.append(exc)
    return out


# What identifies a version of a remote object in fsspec's `info` (S3 ETag/LastModified, GCS
# generation/updated, HTTP ETag/Last-Modified, memory's created, local mtime): a changed object
# changes at least one of them, so the decode cache never serves a replaced image.
_VERSION_KEYS = ("size", "ETag", "etag", "generation", "VersionId", "version_id", "LastModified", "Last-Modified",
                 "last_modified", "updated", "mtime", "created", "md5Hash", "Content-MD5")
_unversioned = itertools.count()


def remote_version(url: Any) -> tuple[Any, ...]:
    """What identifies the object at `url` now (one cheap `info` call), or `InputError` when it is
    missing or cannot be read. An object whose filesystem reports no version is never cached."""
    try:
        info = url.fs.info(url.path)
    except FileNotFoundError as exc:
        raise InputError("image", _not_found(url, exc)) from None
    except Exception as exc:  # each filesystem raises its own (aiohttp, botocore...): this row fails
        raise InputError("image", f"cannot read {url}: {_reason(exc)}") from None
    if info.get("type") == "directory":
        raise InputError("image", f"{url} is a directory, not an image")
    version = tuple((key, str(info[key])) for key in _VERSION_KEYS if info.get(key) is not None)
    if not any(key != "size" for key, _ in version):
        version += (("read", next(_unversioned)),)
    return version


def _not_found(url: Any, exc: FileNotFoundError) -> str:
    # fsspec's http filesystem reports any failure (a refused connection, a 403) as not found,
    # with the real reason as the cause: say it.
    cause = exc.__cause__
    plain = cause is None or isinstance(cause, FileNotFoundError) or getattr(cause, "status", None) == 404
    return f"not found: {url}" + ("" if plain else f" ({_reason(cause)})")


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _read(path: Any) -> bytes:
    if not is_url(path):
        try:
            return path.read_bytes()
        except OSError as exc:
            raise InputError("image", f"cannot read {path}: {exc.strerror}") from None
    try:
        return path.fs.cat_file(path.path)  # one GET, not the ranged reads of fs.open
    except FileNotFoundError as exc:
        raise InputError("image", _not_found(path, exc)) from None
    except Exception as exc:  # as in remote_version
        raise InputError("image", f"cannot read {path}: {_reason(exc)}") from None


# Datasets hold many rows per image (5 levels x 5 variants in DFJ-Meta, pairs, several
# detectors), usually next to each other: keep the last few decoded images. Keyed on the file's
# mtime and size (a URL: its version, `remote_version`) too, so an image replaced on disk or in
# its bucket is read again. Callers must not modify them.
@lru_cache(maxsize=16)
def _decode(path: Path | UPath, version: tuple[Any, ...], max_image_pixels: int) -> LoadedImage:
    data = _read(path)
    try:
        rgb = decode_bytes(data, max_image_pixels)
    except ImageTooLarge as exc:
        raise InputError(
            "image",
            f"{path}: {exc} (decompression-bomb guard; raise --max-image-pixels if the image is genuine)",
        ) from None
    except ImageUnreadable as exc:
        raise InputError("image", f"{path}: {exc}") from None
    return LoadedImage(image=rgb, sha256=hashlib.sha256(data).hexdigest(), data=data)


class ImageTooLarge(errors.InputError):
    """More pixels than the caller's limit; nothing was decoded."""

    def __init__(self, width: int | None, height: int | None, limit: int) -> None:
        size = f"{width}x{height} = {width * height} pixels" if width and height else "a frame or tile"
        super().__init__(f"{size} exceeds the limit of {limit}")
        self.width, self.height, self.limit = width, height, limit


class ImageUnreadable(errors.InputError):
    """Bytes that are not a decodable image (empty, unknown format, truncated, corrupt)."""


def decode_bytes(data: bytes, max_image_pixels: int) -> Image.Image:
    """`data` decoded to RGB, refusing images over `max_image_pixels` before decoding them.

    Our limit governs, not PIL's global one (which refuses above ~179 MP whatever the caller
    asked): see `pil_pixel_limit`. Messages never carry PIL's object reprs.
    """
    if not data:
        raise ImageUnreadable("the file is empty (0 bytes), not an image")
    with warnings.catch_warnings(), pil_pixel_limit(max_image_pixels):
        # PIL only warns between 1x and 2x its limit; we refuse at our own limit instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_image_pixels:
                raise ImageTooLarge(width, height, max_image_pixels)
            img.load()
            return img if img.mode == "RGB" else img.convert("RGB")  # no second 3-bytes-a-pixel copy
        except ImageTooLarge:
            raise
        except Image.DecompressionBombError:  # a frame or tile over the limit
            raise ImageTooLarge(None, None, max_image_pixels) from None
        except Image.UnidentifiedImageError:
            raise ImageUnreadable("cannot decode image (not a format PIL recognises)") from None
        except (OSError, SyntaxError, ValueError) as exc:  # PIL's ways of saying "corrupt"
            raise ImageUnreadable(f"cannot decode image ({exc})") from None


_pil_lock = threading.Lock()
_pil_active: Counter[int] = Counter()
_pil_saved: list[int | None] = []


@contextmanager
def pil_pixel_limit(limit: int) -> Iterator[None]:
    """PIL's global `Image.MAX_IMAGE_PIXELS` raised to `limit` while this call decodes.

    PIL checks its one process-wide limit deep inside its plugins, so our per-call limit can
    only govern by setting it. Thread-safe and restoring: while calls are active the global is
    the largest limit any of them asked for (never below the value found, so nobody's guard is
    lowered), and it returns to that value when the last one ends. Our own size check, made
    before decoding, enforces each call's own limit. PIL refuses at twice its value, so a
    limit at or below it leaves the global untouched.
    """
    with _pil_lock:
        if not _pil_active:
            _pil_saved[:] = [Image.MAX_IMAGE_PIXELS]
        _pil_active[limit] += 1
        _set_pil_limit()
    try:
        yield
    finally:
        with _pil_lock:
            _pil_active[limit] -= 1
            if _pil_active[limit] <= 0:
                del _pil_active[limit]
            _set_pil_limit()


def _set_pil_limit() -> None:
    saved = _pil_saved[0] if _pil_saved else Image.MAX_IMAGE_PIXELS
    if saved is None or not _pil_active:  # None: PIL's guard was switched off by the application
        Image.MAX_IMAGE_PIXELS = saved
        return
    Image.MAX_IMAGE_PIXELS = max(saved, max(_pil_active))


def check_boxes(sample: Sample, size: tuple[int, int]) -> None:
    width, height = size
    for i, artifact in enumerate(sample.artifacts):
        box = artifact.bbox
        if box is not None and (box.x1 > width or box.y1 > height):
            raise InputError(
                f"artifacts[{i}].bbox",
                f"{box.as_list()} lies outside the {width}x{height} image {sample.image.name}",
            )
