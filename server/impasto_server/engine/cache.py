"""A bounded, thread-safe cache of style targets (Gram matrices), so a style image already seen
with the same settings costs no network pass."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch


class GramCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, dict[str, torch.Tensor]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def get_or_compute(
        self, key: Hashable, compute: Callable[[], dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
        # Computed outside the lock: another job's targets need not wait for this one.
        grams = compute()
        size = sum(g.numel() * g.element_size() for g in grams.values())
        if size > self.max_bytes:
            return grams
        with self._lock:
            if key not in self._items:
                self._items[key] = grams
                self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= sum(g.numel() * g.element_size() for g in evicted.values())
        return grams

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "bytes": self._bytes,
                    "entries": len(self._items)}  # fmt: skip
