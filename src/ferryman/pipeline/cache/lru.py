"""The LRU index the memory and disk tiers keep: (key, variant) -> value, bounded (pure)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

V = TypeVar("V")
Slot = tuple[bytes, bytes]  # (key, variant)


class LruIndex(Generic[V]):
    """(key, variant) -> value with a byte cost, least recently used first.

    Bounded three ways: total cost ``max_bytes``, ``max_entries`` slots, and
    ``max_variants`` variants per key (past it, the key's least recently used variant
    goes).  ``touch``, ``put``, ``pop`` and each eviction are O(1) (``OrderedDict``);
    the variants of a key are listed (in their own LRU order) only for keys that have
    a Vary variant, so a plain URL costs no second table.  Both tiers use it: memory
    for its entries, disk for its index of files.
    """

    def __init__(self, max_bytes: int, max_entries: int = 1 << 62, max_variants: int = 1 << 62) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max(1, max_entries)
        self.max_variants = max(1, max_variants)
        self.used = 0
        self._items: OrderedDict[Slot, tuple[V, int]] = OrderedDict()
        self._variants: dict[bytes, dict[bytes, None]] = {}  # keys with a Vary variant: all variants

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Slot]:
        """Slots, least recently used first."""
        return iter(list(self._items))

    def get(self, key: bytes, variant: bytes, *, touch: bool = True) -> V | None:
        item = self._items.get((key, variant))
        if item is None:
            return None
        if touch:
            self._items.move_to_end((key, variant))
            listed = self._variants.get(key)
            if listed is not None:
                del listed[variant]
                listed[variant] = None
        return item[0]

    def put(self, key: bytes, variant: bytes, value: V, cost: int) -> list[tuple[Slot, V]]:
        """Insert as most recent (replacing the slot); return what was evicted to fit."""
        self.pop(key, variant)
        evicted: list[tuple[Slot, V]] = []
        listed = self._variants.get(key)
        if listed is None and variant:
            listed = self._variants[key] = {}
            if (key, b"") in self._items:
                listed[b""] = None
        if listed is not None:
            while len(listed) >= self.max_variants:
                slot = (key, next(iter(listed)))
                evicted.append((slot, self._remove(slot)))
            listed = self._variants.setdefault(key, {})
            listed[variant] = None
        self._items[(key, variant)] = (value, cost)
        self.used += cost
        return evicted + self.evict()

    def evict(self) -> list[tuple[Slot, V]]:
        evicted: list[tuple[Slot, V]] = []
        while (self.used > self.max_bytes or len(self._items) > self.max_entries) and self._items:
            slot = next(iter(self._items))
            evicted.append((slot, self._remove(slot)))
        return evicted

    def pop(self, key: bytes, variant: bytes) -> V | None:
        if (key, variant) not in self._items:
            return None
        return self._remove((key, variant))

    def pop_key(self, key: bytes) -> list[V]:
        return [self._remove((key, v)) for v in self.variants(key)]

    def variants(self, key: bytes) -> list[bytes]:
        listed = self._variants.get(key)
        if listed is not None:
            return list(listed)
        return [b""] if (key, b"") in self._items else []

    def keys_with_prefix(self, prefix: bytes) -> list[bytes]:
        return list(dict.fromkeys(k for k, _ in self._items if k.startswith(prefix)))

    def clear(self) -> None:
        self._items.clear()
        self._variants.clear()
        self.used = 0

    def _remove(self, slot: Slot) -> V:
        value, cost = self._items.pop(slot)
        self.used -= cost
        listed = self._variants.get(slot[0])
        if listed is not None:
            listed.pop(slot[1], None)
            if not listed:
                del self._variants[slot[0]]
        return value
