r"""Training batches built with the inference processor, and the length check that guarantees no
sequence is ever cut.

A training sequence is the rendered prompt (system turn, user turn with the image expanded to its
visual tokens, assistant header) exactly as `ImageTextProcessor` builds it for the judges,
followed by the answer tokens, `<|im_end|>` and, by default, the newline the chat template puts
after it. Labels are -100 on the prompt: the loss is on the answer and the end of the turn. What
"the end of the turn" covers is `end_of_turn` (`config.END_OF_TURN`): "im_end_newline", as
ms-swift >= 3.11 trains (checked against ms-swift 4.6: the labels of a Qwen2.5-VL row end with
`<|im_end|>` and `\n`), or "im_end", as ms-swift did before 3.11. Batches are right padded.

Nothing is truncated here: rows whose full sequence exceeds `max_length` are found before
training (`sequence_lengths`) and refused or dropped with a report, because cutting a sequence
either removes visual tokens (the model then fails on mismatched image features) or the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..backends.base import ChatRequest
from ..backends.processor import ImageTextProcessor
from ..backends.resize import qwen_resize
from .examples import TrainExample
from .visual import ImageEmbeddings, VisualStore

IGNORE_INDEX = -100
END_OF_TURN = "<|im_end|>"

# Stands in for the image when only the rendered text is needed (the chat template only asks
# whether there is an image); the visual token count comes from the real image's size.
_IMAGE_SLOT = Image.new("RGB", (1, 1))


def visual_tokens(processor: ImageTextProcessor, size: tuple[int, int]) -> int:
    """Visual tokens of an image of `size` (width, height) under the processor's pixel budget,
    computed from the size alone with the rule the processor resizes by (`resize.qwen_resize`)."""
    ip = processor.image_processor
    width, height = size
    h, w = qwen_resize(height, width, ip.size["shortest_edge"], ip.size["longest_edge"], ip.patch_size * ip.merge_size)
    return (h // ip.patch_size) * (w // ip.patch_size) // (ip.merge_size**2)


def answer_ids(processor: ImageTextProcessor, target: str, end_of_turn: str = "im_end_newline") -> list[int]:
    """The tokens the loss is on: the answer, `<|im_end|>`, and the newline after it unless
    `end_of_turn` is "im_end"."""
    ids = processor.text_ids(target) + [processor.tokenizer.convert_tokens_to_ids(END_OF_TURN)]
    return ids + processor.text_ids("\n") if end_of_turn == "im_end_newline" else ids


def sequence_length(processor: ImageTextProcessor, example: TrainExample, n_visual: int,
                    end_of_turn: str = "im_end_newline") -> int:
    prompt = processor.prompt_ids(ChatRequest(text=example.prompt, image=_IMAGE_SLOT), n_visual)
    return len(prompt) + len(answer_ids(processor, example.target, end_of_turn))


@dataclass(frozen=True)
class JudgeCollator:
    """Rows of the training dataset (`TrainExample.to_row()`) -> model inputs with labels.

    With a filled `visual` store the batch carries the images' precomputed embeddings
    (`mm_encoder_outputs`) instead of pixels, and no image is opened.
    """

    processor: ImageTextProcessor
    visual: VisualStore | None = None
    end_of_turn: str = "im_end_newline"

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        examples = [TrainExample.from_row(r) for r in rows]
        cached = [self.visual.get(ex.image) for ex in examples] if self.visual is not None else []
        if cached and all(c is not None for c in cached):
            requests = [ChatRequest(text=ex.prompt, image=_IMAGE_SLOT) for ex in examples]
            merge = self.processor.image_processor.merge_size ** 2
            counts = [int(grid.prod()) // merge for _, grid in cached]
            vision = {
                "image_grid_thw": torch.stack([grid for _, grid in cached]),
                "mm_encoder_outputs": {"image": ImageEmbeddings(pooler_output=tuple(e for e, _ in cached))},
            }
        else:
            requests = []
            for ex in examples:
                with Image.open(ex.image) as img:  # validated before training (`prepare_examples`)
                    requests.append(ChatRequest(text=ex.prompt, image=img.convert("RGB")))
            vision, counts = self.processor.image_inputs(requests)
        ids, labels = [], []
        for request, n, ex in zip(requests, counts, examples):
            prompt = self.processor.prompt_ids(request, n)
            answer = answer_ids(self.processor, ex.target, self.end_of_turn)
            ids.append(prompt + answer)
            labels.append([IGNORE_INDEX] * len(prompt) + answer)
        width = max(len(s) for s in ids)
        pad = self.processor.pad_token_id
        batch = {
            "input_ids": torch.tensor([s + [pad] * (width - len(s)) for s in ids], dtype=torch.long),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in ids], dtype=torch.long),
            "labels": torch.tensor([s + [IGNORE_INDEX] * (width - len(s)) for s in labels], dtype=torch.long),
        }
        # transformers 5 builds Qwen's 3D rope positions only when told which tokens are visual.
        batch["mm_token_type_ids"] = (batch["input_ids"] == self.processor.image_token_id).int()
        return {**batch, **vision}
