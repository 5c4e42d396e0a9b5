"""Open a sample's image safely and check its annotations against it.

Everything that can be wrong with an image (missing, unreadable, truncated, over the
decompression-bomb limit, boxes outside it) raises `InputError(field="image"|"artifacts[i].bbox")`
so that the caller records one error row and goes on.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image

from ..records import Sample
from .canonical import InputError

# PIL's own default: images larger than this are refused, not decoded (decompression bombs).
MAX_IMAGE_PIXELS = 89_478_485


@dataclass(frozen=True)
class LoadedImage:
    image: Image.Image  # RGB, fully decoded
    sha256: str  # of the file's bytes: identifies the content for caches

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def open_image(sample: Sample, max_image_pixels: int = MAX_IMAGE_PIXELS) -> LoadedImage:
    path = sample.image
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise InputError("image", f"file not found: {path}") from None
    except OSError as exc:
        raise InputError("image", f"cannot read {path}: {exc.strerror}") from None
    loaded = _decode(path, stat.st_mtime_ns, stat.st_size, max_image_pixels)
    check_boxes(sample, loaded.image.size)
    return loaded


# Datasets hold many rows per image (5 levels x 5 variants in DFJ-Meta, pairs, several
# detectors), usually next to each other: keep the last few decoded images. Keyed on the file's
# mtime and size too, so an image replaced on disk is read again. Callers must not modify them.
@lru_cache(maxsize=16)
def _decode(path: Path, mtime_ns: int, size: int, max_image_pixels: int) -> LoadedImage:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError("image", f"cannot read {path}: {exc.strerror}") from None
    with warnings.catch_warnings():
        # PIL only warns between 1x and 2x its limit; we refuse at our own limit instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_image_pixels:
                raise InputError(
                    "image",
                    f"{path}: {width}x{height} = {width * height} pixels exceeds the limit of "
                    f"{max_image_pixels} (decompression-bomb guard; raise --max-image-pixels if the "
                    "image is genuine)",
                )
            img.load()
            rgb = img.convert("RGB")
        except InputError:
            raise
        except Image.DecompressionBombError as exc:
            raise InputError("image", f"{path}: {exc}") from None
        except (OSError, SyntaxError, ValueError) as exc:  # PIL's ways of saying "corrupt"
            raise InputError("image", f"{path}: cannot decode image ({exc})") from None
    return LoadedImage(image=rgb, sha256=hashlib.sha256(data).hexdigest())


def check_boxes(sample: Sample, size: tuple[int, int]) -> None:
    width, height = size
    for i, artifact in enumerate(sample.artifacts):
        box = artifact.bbox
        if box is not None and (box.x1 > width or box.y1 > height):
            raise InputError(
                f"artifacts[{i}].bbox",
                f"{box.as_list()} lies outside the {width}x{height} image {sample.image.name}",
            )
