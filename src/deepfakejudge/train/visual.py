"""Visual embeddings of the training images, computed once before the first step.

The released recipe freezes the vision tower and its merger, so an image's embeddings are the
same in every step of every epoch. DFJ-Meta has about 25 records per image and the recipe runs
2 epochs: computed per step, the tower would encode each image some 50 times, and at the paper's
pixel budget the tower is most of a forward pass. Here each distinct image is encoded once
(batched, without autograd, on the training device) and kept in CPU memory; the collator then
gives the model the rows' embeddings (`mm_encoder_outputs`) instead of pixels. The loss and the
adapter's gradients are those of the pixel path up to the dtype's rounding (tests/test_train.py).

Off (the tower runs in every step, as before) when `visual_cache_gb` is 0, when the embeddings
would not fit in it, or when the weights are sharded (DeepSpeed, FSDP), where a forward outside
the trainer's engine is not possible.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..backends.base import ChatRequest
from ..backends.processor import ImageTextProcessor


class ImageEmbeddings(BaseModelOutputWithPooling):
    """A batch's image embeddings, as the model reads them (`mm_encoder_outputs["image"].pooler_output`).

    transformers' own output type (the model returns it again among its outputs), with a
    `pin_memory` of its own: the DataLoader pins batches on GPU runs, and its generic pinning copies
    a mapping with `update()`, which a ModelOutput refuses.
    """

    def pin_memory(self) -> ImageEmbeddings:
        return ImageEmbeddings(pooler_output=tuple(e.pin_memory() for e in self.pooler_output))


class VisualStore:
    """image path -> (embeddings on CPU, grid); empty until `encode_images` fills it."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[Any, Any]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def get(self, path: str | Path) -> tuple[Any, Any] | None:
        return self._items.get(str(path))

    def put(self, path: str | Path, embeds: Any, grid: Any) -> None:
        self._items[str(path)] = (embeds, grid)

    @property
    def nbytes(self) -> int:
        return sum(e.numel() * e.element_size() for e, _ in self._items.values())


def encode_images(
    model: Any,
    processor: ImageTextProcessor,
    store: VisualStore,
    paths: Sequence[Path],
    visual_tokens: int,
    max_bytes: int,
    batch_size: int = 8,
    progress: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """Fill `store` with the embeddings of `paths` (distinct images; `visual_tokens` in all).

    `model` is the Qwen2(.5)-VL model (or a PEFT model around it) on its training device. Gives
    up, leaving `store` empty, when the embeddings would take more than `max_bytes`. Returns
    what was done, for the run record.
    """
    import torch

    started = time.perf_counter()
    param = next(model.parameters())
    done = 0
    for i in range(0, len(paths), batch_size):
        chunk = paths[i:i + batch_size]
        requests = []
        for path in chunk:
            with Image.open(path) as img:  # validated before training (`prepare_examples`)
                requests.append(ChatRequest(text="", image=img.convert("RGB")))
        pixels, _ = processor.image_inputs(requests)
        grids = pixels["image_grid_thw"]
        with torch.no_grad():  # not inference_mode: these tensors feed autograd graphs later
            feats = model.get_image_features(
                pixels["pixel_values"].to(param.device, param.dtype), grids.to(param.device), return_dict=True
            ).pooler_output
        if i == 0:
            need = visual_tokens * feats[0].shape[-1] * feats[0].element_size()
            if need > max_bytes:
                return {"used": False, "reason": f"the embeddings need {need / 2**30:.1f} GiB, more than "
                                                  f"visual_cache_gb={max_bytes / 2**30:g}", "bytes": need}
        for path, embeds, grid in zip(chunk, feats, grids):
            store.put(path, embeds.to("cpu"), grid)
        done += len(chunk)
        if progress is not None:
            progress(len(chunk))
    return {"used": True, "images": done, "bytes": store.nbytes, "seconds": round(time.perf_counter() - started, 3)}
