"""Encode each image once: an LRU of visual embeddings keyed by image content and pixel budget.

The vision tower is frozen and the same image is judged many times (pairwise in two orders,
25 DFJ-Meta records per image, several detectors per image), while at the paper's pixel budget
the vision encoder takes most of a score-only forward. Embeddings are kept on the model's device
up to a byte budget; least recently used ones are dropped first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable


class VisionCache:
    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"vision cache: max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[Any, Any]] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _size(embeds: Any) -> int:
        return embeds.numel() * embeds.element_size()

    def get(self, key: Hashable) -> tuple[Any, Any] | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item

    def put(self, key: Hashable, embeds: Any, grid: Any) -> None:
        size = self._size(embeds)
        if size > self.max_bytes or key in self._items:
            return
        while self._bytes + size > self.max_bytes:
            _, (old, _) = self._items.popitem(last=False)
            self._bytes -= self._size(old)
        self._items[key] = (embeds, grid)
        self._bytes += size

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._items), "bytes": self._bytes, "hits": self.hits, "misses": self.misses}
