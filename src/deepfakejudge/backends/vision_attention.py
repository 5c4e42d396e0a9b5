"""Grouped attention for the Qwen2-VL / Qwen2.5-VL vision tower.

Outside flash attention, transformers runs the vision tower's attention one chunk at a time: a
Python loop over every window of every image (Qwen2.5-VL: 81 windows of a 980x980 image, in 28
of its 32 layers) or over every image (full-attention layers, Qwen2-VL). On a GPU each of those
calls is far too small to fill the card, and the loop also reads the chunk lengths back from the
device in every layer. Most chunks have the same length (a window is 8x8 patches except at the
right and bottom edges; images of one size give equal full-attention chunks), so here the chunks
are grouped by length and each group is one batched `scaled_dot_product_attention` call: a
handful of calls per layer instead of hundreds. The arithmetic per chunk is the same, so the
outputs agree with the loop within the dtype's rounding (tested against it).

Where it pays: on a GPU, where a window's attention is a few microseconds of arithmetic behind
several kernel launches. On a CPU each window's call is already compute-bound (measured at the
3B tower's shapes, 16 heads x 80: about 240 us per 64-token window whether alone or in a batch),
and the gathers make grouping about 2x slower there, so `HFBackend` and `dfj train` switch it on
for CUDA devices only unless told otherwise (`LoadOptions.vision_attention`).

The grouping ("plan") depends only on `cu_seqlens`, which the tower builds once per forward for
its window layers and once for its full layers; it is computed once per tensor and shared by the
layers that receive it.
"""

from __future__ import annotations

import inspect
import sys
import types
from dataclasses import dataclass
from typing import Any

_CLASSES = ("Qwen2_5_VLVisionAttention", "VisionAttention")  # Qwen2.5-VL, Qwen2-VL
_MARK = "_dfj_grouped"
_PLANS_KEPT = 4  # a forward uses two cu_seqlens tensors (windows, full); keep the latest few


@dataclass(frozen=True)
class _Group:
    length: int  # tokens per chunk
    count: int  # chunks
    start: int | None  # set when the chunks are consecutive: a view of the sequence, no gather
    index: Any  # (count, length) token positions when they are not


@dataclass(frozen=True)
class _Plan:
    groups: tuple[_Group, ...]
    inverse: Any  # token order of the groups' concatenated outputs -> sequence order; None if the same


def make_plan(cu_seqlens: Any) -> _Plan:
    """Chunks of equal length grouped together, in order of first appearance."""
    import torch

    cu = [int(x) for x in cu_seqlens.tolist()]
    device = cu_seqlens.device
    by_length: dict[int, list[int]] = {}
    for a, b in zip(cu, cu[1:]):
        if b > a:
            by_length.setdefault(b - a, []).append(a)
    groups: list[_Group] = []
    order: list[Any] = []
    for length, starts in by_length.items():
        consecutive = all(s == starts[0] + i * length for i, s in enumerate(starts))
        if consecutive:
            groups.append(_Group(length, len(starts), starts[0], None))
            order.append(torch.arange(starts[0], starts[0] + len(starts) * length))
        else:
            index = torch.tensor(starts)[:, None] + torch.arange(length)[None, :]
            groups.append(_Group(length, len(starts), None, index.to(device)))
            order.append(index.reshape(-1))
    flat = torch.cat(order) if order else torch.zeros(0, dtype=torch.long)
    identity = bool(torch.equal(flat, torch.arange(flat.numel())))
    return _Plan(tuple(groups), None if identity else torch.argsort(flat).to(device))


class _PlanCache:
    """cu_seqlens tensor -> plan. Entries hold their tensor, so an id is never reused while kept."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[Any, _Plan]] = {}

    def get(self, cu_seqlens: Any) -> _Plan:
        entry = self._entries.get(id(cu_seqlens))
        if entry is not None and entry[0] is cu_seqlens:
            return entry[1]
        plan = make_plan(cu_seqlens)
        if len(self._entries) >= _PLANS_KEPT:
            self._entries.pop(next(iter(self._entries)))
        self._entries[id(cu_seqlens)] = (cu_seqlens, plan)
        return plan


def grouped_attention(q: Any, k: Any, v: Any, plan: _Plan, scale: float) -> Any:
    """Attention within each chunk. q, k, v: (tokens, heads, head_dim); returns the same shape."""
    import torch
    import torch.nn.functional as F

    heads, dim = q.shape[1:]
    outs = []
    for g in plan.groups:
        if g.start is not None:
            end = g.start + g.count * g.length
            qg, kg, vg = (t[g.start:end].view(g.count, g.length, heads, dim) for t in (q, k, v))
        else:
            qg, kg, vg = (t[g.index] for t in (q, k, v))
        # (chunks, length, heads, dim) -> (chunks, heads, length, dim) and back
        o = F.scaled_dot_product_attention(qg.transpose(1, 2), kg.transpose(1, 2), vg.transpose(1, 2), scale=scale)
        outs.append(o.transpose(1, 2).reshape(-1, heads, dim))
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    return out if plan.inverse is None else out[plan.inverse]


def _forward(self: Any, hidden_states: Any, cu_seqlens: Any, position_embeddings: Any = None,
             max_seqlen: Any = None, **kwargs: Any) -> Any:
    # Same steps as transformers' forward (qkv, rotary, attention, proj); only the attention differs.
    seq = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(seq, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = self._dfj_rotary(q, k, cos, sin)
    out = grouped_attention(q, k, v, self._dfj_plans.get(cu_seqlens), self.scaling)
    return self.proj(out.reshape(seq, -1))


def _patchable(module: Any) -> bool:
    cls = type(module)
    if cls.__name__ not in _CLASSES or not cls.__module__.startswith("transformers.models.qwen2"):
        return False
    params = inspect.signature(cls.forward).parameters
    rotary = getattr(sys.modules[cls.__module__], "apply_rotary_pos_emb_vision", None)
    return (rotary is not None and all(p in params for p in ("hidden_states", "cu_seqlens", "position_embeddings"))
            and all(hasattr(module, a) for a in ("qkv", "proj", "num_heads", "scaling")))


def set_grouped_vision_attention(model: Any, enabled: bool = True) -> int:
    """Switch the vision tower of a Qwen2(.5)-VL `model` to grouped attention (or back).

    Applies only where the tower uses SDPA (flash attention already runs all chunks in one varlen
    call; eager is left as the user asked). Returns how many attention modules now run grouped.
    """
    plans = _PlanCache()  # shared by the layers of this model
    grouped = 0
    for module in model.modules():
        if not _patchable(module):
            continue
        if not enabled or module.config._attn_implementation != "sdpa":
            if getattr(module, _MARK, False):
                del module.forward, module._dfj_plans, module._dfj_rotary
                setattr(module, _MARK, False)
            continue
        module._dfj_rotary = sys.modules[type(module).__module__].apply_rotary_pos_emb_vision
        module._dfj_plans = plans
        module.forward = types.MethodType(_forward, module)
        setattr(module, _MARK, True)
        grouped += 1
    return grouped


def grouped_vision_attention(model: Any) -> bool:
    """Whether `model`'s vision tower runs grouped attention now."""
    return any(getattr(m, _MARK, False) for m in model.modules())
