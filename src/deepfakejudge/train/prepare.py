"""Everything checked before a model is loaded: rows -> examples, images opened once each, and
every full sequence measured against `max_length` (never truncated: refused or dropped)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..backends.budget import longest_field, tokenizer_budget
from ..backends.processor import ImageTextProcessor
from ..data import InputError, load_records, open_image
from ..data.images import check_boxes
from ..data.urls import is_url
from ..errors import InputError as FileError
from ..prompts import Template
from ..records import RowError, Sample
from .collate import sequence_length, visual_tokens
from .examples import TrainExample, build_example

TOO_LONG = "<sequence>"  # the error field of a row over max_length


@dataclass(frozen=True)
class PreparedData:
    examples: tuple[TrainExample, ...]
    errors: tuple[RowError, ...]  # rows that cannot be trained on, each with file:line and field
    rows: int  # rows read (valid + unusable)
    longest: int  # tokens of the longest kept sequence
    data_path: Path
    image_tokens: dict[Path, int] = field(default_factory=dict)  # visual tokens of each image of `examples`

    @property
    def too_long(self) -> int:
        """Rows refused because their full sequence exceeds max_length (ms-swift drops these)."""
        return sum(e.field == TOO_LONG for e in self.errors)

    def report(self, limit: int = 20) -> list[str]:
        lines = [str(e) for e in self.errors[:limit]]
        if len(self.errors) > limit:
            lines.append(f"... and {len(self.errors) - limit} more")
        return lines


def _image_size(sample: Sample) -> tuple[int, int] | InputError:
    # Each image is decoded once however many rows use it (DFJ-Meta: 25 rows per image); a
    # corrupt file fails here, not in the middle of training. Boxes are checked per row.
    try:
        return open_image(replace(sample, artifacts=())).size
    except InputError as exc:
        return exc


def prepare_examples(
    data: str | Path, template: Template, processor: ImageTextProcessor, max_length: int,
    end_of_turn: str = "im_end_newline", image_roots: Sequence[str | Path] = (),
) -> PreparedData:
    # verbatim: an official ms-swift row is trained on with its own prompt, recognised or not.
    # Images are confined to the data file's folder and `image_roots` (`--image-root`), as in judging.
    dataset = load_records(data, templates=(template,), image_roots=image_roots, verbatim=True)
    remote = next((s for s in dataset.samples if is_url(s.image)), None)
    if remote is not None:
        # The collator reopens every image at every epoch (in DataLoader workers): one download
        # beforehand beats a fetch per step, so URL images are refused rather than read remotely.
        raise FileError(
            f"{remote.where}: field 'image': {remote.image}: dfj train reads images from local files only; "
            "copy the images to a local or mounted folder and name them by path in the data file")
    errors: list[RowError] = list(dataset.errors)
    examples: list[TrainExample] = []
    sizes: dict[Path, tuple[int, int] | InputError] = {}
    image_tokens: dict[Path, int] = {}
    longest = 0
    # Text longer than max_length tokens of the longest token is over without tokenizing it (a
    # 10 MB field would otherwise be tokenized in full just to be refused): backends/budget.py.
    chars_bound = max_length * tokenizer_budget(processor.tokenizer, max_length, 0).max_token_chars
    for sample in dataset.samples:
        try:
            example = build_example(sample, template)
            chars = len(example.prompt) + len(example.target)
            if chars > chars_bound:
                name, length = longest_field(sample)
                raise InputError(name, f"is {length} characters: the sequence is certainly over max_length "
                                       f"{max_length} tokens (not tokenized); sequences are never cut")
            size = sizes.get(sample.image)
            if size is None:
                size = sizes[sample.image] = _image_size(sample)
            if isinstance(size, InputError):
                raise size
            check_boxes(sample, size)
            n_visual = visual_tokens(processor, size)
            n = sequence_length(processor, example, n_visual, end_of_turn)
            if n > max_length:
                raise InputError(
                    TOO_LONG,
                    f"{n} tokens ({n_visual} visual) exceed max_length {max_length}; sequences are never cut "
                    "(that would drop visual tokens or the answer): raise max_length or lower max_pixels",
                )
        except InputError as exc:
            errors.append(RowError(sample.where, exc.field, exc.message, id=sample.id))
            continue
        longest = max(longest, n)
        examples.append(example)
        image_tokens[example.image] = n_visual
    return PreparedData(tuple(examples), tuple(errors), len(dataset.samples) + len(dataset.errors), longest,
                        dataset.path, image_tokens)
