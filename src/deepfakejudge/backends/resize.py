"""Qwen2-VL's image resize rule: one implementation for judging (local and remote) and training.

Sides become multiples of `factor` (14 px patches merged 2x2: 28), the pixel count stays inside
the budget, the aspect ratio is kept as closely as possible. This is qwen-vl-utils' rule, which
ms-swift applies when it trains and the authors' inference used: before the budget is checked,
each side is rounded to a multiple of `factor` but never below `factor`. transformers'
`smart_resize` lacks that clamp, so a side of 14 px or less rounds to 0 and the min-pixel branch
then scales the whole image up (143x13: 7 visual tokens there, 5 with the clamp).

`ImageTextProcessor` resizes with this rule and hands the image processor pixels it does not
resize again; `train.collate.visual_tokens` counts tokens with it; the OpenAI backend's PNG
transport resizes with it. So the three agree by construction.
"""

from __future__ import annotations

import math

from ..errors import InputError
from .base import PixelBudget

FACTOR = 28  # Qwen2-VL: 14 px patches merged 2x2, so sides are multiples of 28
MAX_RATIO = 200  # Qwen2-VL refuses a longer side over 200 times the shorter one


def qwen_resize(height: int, width: int, min_pixels: int, max_pixels: int, factor: int = FACTOR) -> tuple[int, int]:
    """(height, width) for an image of `height` x `width` under the budget [min_pixels, max_pixels]."""
    if min(height, width) < 1:
        raise InputError(f"image: empty image ({width}x{height})")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise InputError(f"image: aspect ratio {width}x{height} is over {MAX_RATIO}; Qwen2-VL cannot take it")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def smart_resize(height: int, width: int, budget: PixelBudget, factor: int = FACTOR) -> tuple[int, int]:
    """`qwen_resize` under a `PixelBudget`: (height, width) rounded to multiples of `factor`
    with the pixel count inside the budget, aspect ratio kept as closely as possible."""
    return qwen_resize(height, width, budget.min_pixels, budget.max_pixels, factor)
