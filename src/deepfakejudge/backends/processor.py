r"""Image + text inputs for Qwen2-VL / Qwen2.5-VL without torchvision.

`Qwen2_5_VLProcessor.from_pretrained` (and `AutoProcessor`) also builds a video processor, which
needs torchvision; torchvision cannot be installed beside every torch build, and judges never see
video. This processor uses only what images need: the checkpoint's tokenizer, its chat template
and the PIL image processor (`Qwen2VLImageProcessorPil`), with the pixel budget applied.

Token boundaries matter: the rendered prompt and the assistant prefix are tokenised separately
and concatenated, because the model generated its answer token by token after
`<|im_start|>assistant\n`; it never saw the prefix merged with the prompt's last newline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, UsageError
from .base import ChatRequest
from .resize import qwen_resize

IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
# Stands in for the user text while the chat template is rendered (see `prompt_ids`).
_SENTINEL = "\x00DFJ-USER-TEXT\x00"


def is_local_model(model: str) -> bool:
    """True for an existing local directory, False for a hub id ("org/name").

    A string that looks like a path but is not a directory raises ValueError here, rather than
    failing later with a confusing hub lookup error.
    """
    if os.path.isdir(model):
        return True
    # Hub ids are "name" or "org/name"; anything else that is not a directory is a wrong path.
    looks_like_path = (
        model.startswith(("/", ".", "~"))
        or model.count("/") > 1
        or "\\" in model
        or os.path.exists(model)
    )
    if looks_like_path or not model.strip():
        raise UsageError(
            f"model: directory not found: '{model}'. Pass an existing checkpoint directory or a "
            "Hugging Face id such as 'Qwen/Qwen2.5-VL-3B-Instruct'."
        )
    return False


def _read_template_file(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        # chat_template.json holds {"chat_template": "..."} (processor-level template).
        return json.loads(text)["chat_template"]
    return text


def find_chat_template(model: str, tokenizer: Any) -> str:
    """The chat template: the tokenizer's own, else chat_template.jinja / chat_template.json."""
    if tokenizer.chat_template:
        return tokenizer.chat_template
    if is_local_model(model):
        for name in CHAT_TEMPLATE_FILES:
            if (Path(model) / name).is_file():
                return _read_template_file(Path(model) / name)
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        for name in CHAT_TEMPLATE_FILES:
            try:
                return _read_template_file(Path(hf_hub_download(model, name)))
            except EntryNotFoundError:
                continue
    raise UsageError(
        f"model '{model}': no chat template found (tokenizer_config.json has none and neither "
        f"{' nor '.join(CHAT_TEMPLATE_FILES)} exists). Use a chat/instruct checkpoint."
    )


@dataclass(frozen=True)
class ImageTextProcessor:
    """Turns `ChatRequest`s into Qwen2-VL model inputs (left padded)."""

    tokenizer: Any
    image_processor: Any
    chat_template: str

    @classmethod
    def from_pretrained(cls, model: str, min_pixels: int, max_pixels: int) -> ImageTextProcessor:
        from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

        is_local_model(model)  # fail early, with a clear message, on a missing directory
        tokenizer = AutoTokenizer.from_pretrained(model)
        # preprocessor_config.json carries min_pixels/max_pixels, which the image processor's
        # __init__ applies *after* `size`; pass all three or the checkpoint's budget wins
        # (transformers 5.23: size={"shortest_edge", "longest_edge"} plus min/max_pixels).
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(
            model,
            size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
            min_pixels=min_pixels,
            max_pixels=max_pixels,
        )
        return cls(tokenizer, image_processor, find_chat_template(model, tokenizer))

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    def render(self, request: ChatRequest) -> str:
        """The chat-template text up to and including the assistant header (no prefix)."""
        content: list[dict[str, str]] = [] if request.image is None else [{"type": "image"}]
        content.append({"type": "text", "text": request.text})
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}],
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=True,
        )

    def text_ids(self, text: str) -> list[int]:
        """Token ids of plain text, as the model would have generated it (no special tokens)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def resized(self, image: Any) -> Any:
        """`image` as RGB at the size the project's one Qwen rule gives it (`resize.qwen_resize`)."""
        from PIL import Image

        ip = self.image_processor
        rgb = image.convert("RGB")
        height, width = qwen_resize(rgb.height, rgb.width, ip.size["shortest_edge"], ip.size["longest_edge"],
                                    ip.patch_size * ip.merge_size)
        if (width, height) != rgb.size:
            rgb = rgb.resize((width, height), Image.Resampling.BICUBIC)  # the image processor's own resample
        return rgb

    def image_inputs(self, requests: Sequence[ChatRequest]) -> tuple[dict[str, Any], list[int]]:
        """Pixel values and grids for the requests that have an image, and the number of
        visual tokens of each request (0 without an image)."""
        images = [self.resized(r.image) for r in requests if r.image is not None]
        if not images:
            return {}, [0] * len(requests)
        # Resized above with qwen-vl-utils' rule, not transformers' `smart_resize`, which has no
        # clamp of small sides (see `resize`); for every other size the pixels are the same.
        out = self.image_processor(images=images, do_resize=False, return_tensors="pt")
        merge = self.image_processor.merge_size**2
        per_image = iter(int(g.prod()) // merge for g in out["image_grid_thw"])
        counts = [next(per_image) if r.image is not None else 0 for r in requests]
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}, counts

    def prompt_ids(self, request: ChatRequest, n_image_tokens: int) -> list[int]:
        """Rendered prompt ids with the one `<|image_pad|>` expanded to `n_image_tokens`.

        The request text (which embeds candidate explanations written by the detectors under
        test) is tokenised with special tokens split: a response containing
        `<|im_end|><|im_start|>assistant` stays plain text and cannot close the user turn.
        """
        rendered = self.render(ChatRequest(text=_SENTINEL, image=request.image))
        if rendered.count(_SENTINEL) != 1:
            raise InputError("chat template: the user text must appear exactly once in the rendered prompt")
        before, after = rendered.split(_SENTINEL)
        ids = (
            self.text_ids(before)
            + self.tokenizer(request.text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            + self.text_ids(after)
        )
        pad = self.image_token_id
        expected = 0 if request.image is None else 1
        if ids.count(pad) != expected:
            raise InputError(f"chat template: expected {expected} '{IMAGE_TOKEN}' token(s), found {ids.count(pad)}")
        if expected:
            at = ids.index(pad)
            ids = ids[:at] + [pad] * n_image_tokens + ids[at + 1 :]
        return ids

    def pad_left(self, sequences: Sequence[Sequence[int]]) -> dict[str, Any]:
        """Left-pad id lists so that every sequence ends at the last position."""
        import torch

        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            if seq:
                input_ids[row, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
                attention_mask[row, width - len(seq) :] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def __call__(
        self,
        requests: Sequence[ChatRequest],
        tails: Sequence[Sequence[int]] | None = None,
        vision: tuple[dict[str, Any], list[int]] | None = None,
    ) -> dict[str, Any]:
        """Model inputs for a batch: prompt ids + tail ids per request, left padded.

        `tails` defaults to each request's tokenised `prefix`; `choice_probs` passes the shared
        context tokens instead. `vision` is what `image_inputs` returns, or already-encoded
        images (`image_grid_thw` + `mm_encoder_outputs`, and the visual token counts).
        """
        if not requests:
            raise ValueError("requests: empty batch")
        if tails is None:
            tails = [self.text_ids(r.prefix) for r in requests]
        if len(tails) != len(requests):
            raise ValueError(f"tails: {len(tails)} given for {len(requests)} requests")
        vision, counts = self.image_inputs(requests) if vision is None else vision
        sequences = [self.prompt_ids(r, n) + list(t) for r, n, t in zip(requests, counts, tails)]
        batch = self.pad_left(sequences)
        if vision:
            # transformers 5 builds Qwen's 3D (t, h, w) rope positions only when it is told which
            # tokens are visual; without `mm_token_type_ids` image tokens silently get 1D positions.
            batch["mm_token_type_ids"] = (batch["input_ids"] == self.image_token_id).int()
        return {**batch, **vision}
