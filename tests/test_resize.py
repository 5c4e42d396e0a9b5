"""One Qwen resize rule everywhere (`backends.resize`): qwen-vl-utils' clamp of small sides, the
same grid in local judging, remote payloads and training, and the same pixels as before for every
image the clamp does not touch."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deepfakejudge.backends.base import PixelBudget
from deepfakejudge.backends.openai import smart_resize
from deepfakejudge.backends.processor import ImageTextProcessor
from deepfakejudge.backends.resize import qwen_resize
from deepfakejudge.train.collate import visual_tokens

MIN, MAX = 3136, 1003520  # the judges' budget (56x56 .. 1280 tokens)


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    return ImageTextProcessor.from_pretrained(str(tiny_model_dir), MIN, MAX)


def test_a_side_of_14_px_or_less_is_clamped_to_28_as_qwen_vl_utils_does(processor):
    # By hand, qwen-vl-utils' rule for 143 wide x 13 high: height round(13/28) = 0 -> clamped to 28,
    # width round(143/28) * 28 = 140; 28 x 140 = 3920 pixels is inside [3136, 1003520]: a 2 x 10 patch
    # grid, 20 patches, 5 visual tokens after the 2x2 merge. (transformers' smart_resize, without the
    # clamp, takes the min-pixel branch: 28 x 196, 7 tokens.)
    assert qwen_resize(13, 143, MIN, MAX) == (28, 140)
    assert smart_resize(13, 143, PixelBudget(MIN, MAX)) == (28, 140)  # the remote PNG transport
    assert visual_tokens(processor, (143, 13)) == 5  # training's length check
    vision, counts = processor.image_inputs([_request(Image.new("RGB", (143, 13), "gray"))])
    assert counts == [5] and vision["image_grid_thw"].tolist() == [[1, 2, 10]]  # judging and training batches
    # A side of exactly 14 px rounds to 0 as well (round half to even); 15 px rounds to 28.
    assert qwen_resize(14, 300, MIN, MAX) == (28, 308) and qwen_resize(15, 300, MIN, MAX) == (28, 308)
    assert qwen_resize(5, 1000, MIN, MAX) == (28, 1008)


def _request(image):
    from deepfakejudge.backends.base import ChatRequest

    return ChatRequest(text="", image=image)


@pytest.mark.parametrize("size", [(230, 150), (80, 60), (1900, 1200), (37, 1000), (5000, 29), (28, 28), (143, 13)])
def test_every_place_agrees_on_the_grid(processor, size):
    width, height = size
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))
    vision, counts = processor.image_inputs([_request(image)])
    h, w = qwen_resize(height, width, MIN, MAX)
    assert vision["image_grid_thw"].tolist() == [[1, h // 14, w // 14]]
    assert counts == [visual_tokens(processor, size)] == [(h // 14) * (w // 14) // 4]
    assert smart_resize(height, width, PixelBudget(MIN, MAX)) == (h, w)


def test_pixels_unchanged_where_the_clamp_does_not_apply(processor):
    """For sides over 14 px the rule is transformers' own: the image processor, left to resize by
    itself, produces exactly the pixels we hand it."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as transformers_rule

    rng = np.random.default_rng(3)
    for height, width in [(150, 230), (60, 80), (1200, 1900), (1000, 37)]:
        assert qwen_resize(height, width, MIN, MAX) == transformers_rule(height, width, 28, MIN, MAX)
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        ours, _ = processor.image_inputs([_request(image)])
        theirs = processor.image_processor(images=[image], return_tensors="pt")
        assert ours["image_grid_thw"].tolist() == theirs["image_grid_thw"].tolist()
        assert np.array_equal(ours["pixel_values"].numpy(), theirs["pixel_values"].numpy())


def test_transparent_images_drop_alpha(processor):
    """RGBA is converted to RGB by dropping the alpha channel (as ms-swift's training does), not
    composited onto white (as the authors' inference script does); see docs/train-and-evaluate.md."""
    rgba = Image.new("RGBA", (56, 56), (200, 10, 10, 0))  # fully transparent red
    ours, _ = processor.image_inputs([_request(rgba)])
    dropped, _ = processor.image_inputs([_request(Image.new("RGB", (56, 56), (200, 10, 10)))])
    assert np.array_equal(ours["pixel_values"].numpy(), dropped["pixel_values"].numpy())
