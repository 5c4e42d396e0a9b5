"""Grouped vision attention: the plan by hand, the attention against a per-chunk loop, the tiny
model's vision tower against transformers' own loop, and the backend's switch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deepfakejudge.backends.base import ChatRequest, LoadOptions
from deepfakejudge.backends.hf import HFBackend, model_classes
from deepfakejudge.backends.processor import ImageTextProcessor
from deepfakejudge.backends.vision_attention import (
    grouped_attention,
    grouped_vision_attention,
    make_plan,
    set_grouped_vision_attention,
)
from deepfakejudge.records import SCORES


def loop_attention(q, k, v, cu, scale):
    """The reference: one SDPA call per chunk, as transformers does it outside flash attention."""
    out = []
    for a, b in zip(cu, cu[1:]):
        if b > a:
            o = torch.nn.functional.scaled_dot_product_attention(
                *(t[a:b].transpose(0, 1) for t in (q, k, v)), scale=scale)
            out.append(o.transpose(0, 1))
    return torch.cat(out)


def test_plan_groups_chunks_by_length_by_hand():
    # lengths 4, 4, 3, 4, 0, 3: the empty chunk vanishes; the 4s are not consecutive (the 3 at 8..10)
    plan = make_plan(torch.tensor([0, 4, 8, 11, 15, 15, 18]))
    assert [(g.length, g.count, g.start) for g in plan.groups] == [(4, 3, None), (3, 2, None)]
    assert plan.groups[0].index.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [11, 12, 13, 14]]
    assert plan.groups[1].index.tolist() == [[8, 9, 10], [15, 16, 17]]
    # outputs come in group order 0..7, 11..14, 8..10, 15..17; the inverse puts them back
    order = [*range(8), *range(11, 15), 8, 9, 10, 15, 16, 17]
    assert [order[i] for i in plan.inverse.tolist()] == list(range(18))
    # equal consecutive chunks are a view: no gather, no reordering
    same = make_plan(torch.tensor([0, 5, 10, 15]))
    assert [(g.length, g.count, g.start) for g in same.groups] == [(5, 3, 0)] and same.inverse is None


@pytest.mark.parametrize("cu", [[0, 4, 8, 11, 15, 15, 18], [0, 6, 12, 18], [0, 18], [0, 1, 18], [0, 7, 9, 16, 18]])
def test_grouped_attention_equals_the_per_chunk_loop(cu):
    g = torch.Generator().manual_seed(len(cu))
    q, k, v = (torch.randn(cu[-1], 3, 8, generator=g, dtype=torch.float64) for _ in range(3))
    got = grouped_attention(q, k, v, make_plan(torch.tensor(cu)), 0.35)
    torch.testing.assert_close(got, loop_attention(q, k, v, cu, 0.35), rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module")
def tower(tiny_model_dir):
    model = model_classes()["qwen2_5_vl"].from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    processor = ImageTextProcessor.from_pretrained(str(tiny_model_dir), 3136, 1003520)
    rng = np.random.default_rng(3)
    # Full-size windows, edge windows of several shapes, two images of one size (equal full chunks).
    sizes = [(980, 980), (300, 200), (980, 980), (150, 400), (56, 56)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    pixels, _ = processor.image_inputs([ChatRequest(text="", image=im) for im in images])
    return model, pixels["pixel_values"], pixels["image_grid_thw"]


def test_tiny_vision_tower_matches_transformers_loop(tower):
    model, pv, grid = tower
    blocks = model.model.visual.blocks
    with torch.inference_mode():
        set_grouped_vision_attention(model, False)
        reference = model.get_image_features(pv, grid, return_dict=True).pooler_output
        assert set_grouped_vision_attention(model, True) == len(blocks) and grouped_vision_attention(model)
        grouped = model.get_image_features(pv, grid, return_dict=True).pooler_output
        assert set_grouped_vision_attention(model, False) == 0 and not grouped_vision_attention(model)
        assert all("forward" not in b.attn.__dict__ for b in blocks)  # transformers' own forward again
        again = model.get_image_features(pv, grid, return_dict=True).pooler_output
    assert len(grouped) == len(reference) == 5
    for r, g, a in zip(reference, grouped, again):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
        assert torch.equal(a, r)
    # and it did change something: attention over the whole sequence gives other embeddings
    whole = make_plan(torch.tensor([0, int(grid.prod(-1).sum())]))
    with torch.inference_mode():
        set_grouped_vision_attention(model, True)
        for b in blocks:
            b.attn._dfj_plans.get = lambda cu: whole
        wrong = model.get_image_features(pv, grid, return_dict=True).pooler_output
        set_grouped_vision_attention(model, False)
    assert (wrong[0] - reference[0]).abs().max() > 1e-4


def test_eager_attention_is_left_alone(tiny_model_dir):
    model = model_classes()["qwen2_5_vl"].from_pretrained(tiny_model_dir, attn_implementation="eager")
    assert set_grouped_vision_attention(model, True) == 0 and not grouped_vision_attention(model)


def test_backend_scores_agree_with_and_without_grouping(tiny_model_dir, tiny_backend, test_images):
    # auto on CPU: the loop (measured faster there at real shapes: a window's call is compute-bound)
    assert tiny_backend.describe()["vision_attention"] == "loop" and not grouped_vision_attention(tiny_backend.model)
    grouped = HFBackend(LoadOptions(model=str(tiny_model_dir), device="cpu", vision_attention="grouped",
                                    budget=tiny_backend.options.budget))
    try:
        assert grouped.describe()["vision_attention"] == "grouped" and grouped_vision_attention(grouped.model)
        requests = [ChatRequest(text=f"rate {name}", image=im, prefix="<score>") for name, im in test_images.items()]
        tiny_backend.vision_cache.clear()
        for a, b in zip(tiny_backend.choice_probs(requests, SCORES), grouped.choice_probs(requests, SCORES)):
            assert a.keys() == b.keys()
            assert all(abs(a[c] - b[c]) < 1e-5 for c in SCORES)
    finally:
        grouped.close()
    with pytest.raises(ValueError, match="vision_attention: 'fast' is not one of auto, grouped, loop"):
        HFBackend(LoadOptions(model=str(tiny_model_dir), device="cpu", vision_attention="fast"))
