"""The per-process index of stored responses: primary key -> its variants, looked up without I/O.

Rules it owns:

* A request finds its variant by the values of the fields the stored responses ``Vary``
  on: one hash lookup per distinct set of Vary fields stored under the key (almost
  always one), whatever the number of variants.  A ``Vary: *`` response matches nothing.
* Bounded: at most ``max_keys`` keys and ``max_variants`` variants per key; past either,
  the least recently used key or variant goes first (a lookup or a store is a use).
* Pure: no I/O, no clock.  The caller removes what a store evicted (``drop``) and learns
  which keys the index let go (``remember`` returns them).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Protocol, TypeVar

from ferryman.http1.events import Headers
from ferryman.pipeline.cache import policy
from ferryman.pipeline.cache.key import secondary_key


def variant_bytes(vary: policy.SecondaryKey) -> bytes:
    """A secondary key as the bytes a store files a variant under (``b""``: nothing varies)."""
    return b"\x00".join(n + b"=" + (v if v is not None else b"\x01") for n, v in vary)


def selecting_fields(entry: policy.Entry, req_headers: Headers) -> tuple[tuple[bytes, bytes], ...]:
    """The request fields a store keeps with a response: those its Vary names, no others."""
    fields = entry.vary_fields
    if not fields:
        return ()
    return tuple((n, v) for n, v in req_headers if n.lower() in fields)


class Indexed(Protocol):
    @property
    def entry(self) -> policy.Entry: ...

    @property
    def variant(self) -> bytes: ...


S = TypeVar("S", bound=Indexed)


class _Variants(Generic[S]):
    __slots__ = ("by_variant", "fields")

    def __init__(self) -> None:
        self.by_variant: OrderedDict[bytes, S] = OrderedDict()  # least recently used first
        self.fields: dict[tuple[bytes, ...], int] = {}  # each distinct Vary field set: how many use it

    def add(self, stored: S) -> None:
        old = self.by_variant.pop(stored.variant, None)
        if old is not None:
            self._unfield(old)
        self.by_variant[stored.variant] = stored
        fields = stored.entry.vary_fields
        if fields is not None:
            self.fields[fields] = self.fields.get(fields, 0) + 1

    def remove(self, variant: bytes) -> S | None:
        old = self.by_variant.pop(variant, None)
        if old is not None:
            self._unfield(old)
        return old

    def _unfield(self, old: S) -> None:
        fields = old.entry.vary_fields
        if fields is not None:
            left = self.fields[fields] - 1
            if left:
                self.fields[fields] = left
            else:
                del self.fields[fields]


class EntryIndex(Generic[S]):
    """Primary key -> its stored variants (values with ``entry`` and ``variant``), bounded.

    A key with one response that does not vary maps to that value itself; a second
    variant, or a Vary, turns it into a ``_Variants`` (memory per key is what bounds
    a cache of many small objects).
    """

    def __init__(self, max_keys: int, max_variants: int) -> None:
        self.max_keys = max(1, max_keys)
        self.max_variants = max(1, max_variants)
        self._keys: OrderedDict[bytes, S | _Variants[S]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: bytes) -> bool:
        return key in self._keys

    def all(self, key: bytes) -> list[S]:
        found = self._keys.get(key)
        if found is None:
            return []
        return list(found.by_variant.values()) if isinstance(found, _Variants) else [found]

    def select(self, key: bytes, req_headers: Headers) -> list[policy.Entry]:
        """What ``policy.lookup`` should choose among for this request.

        The entries whose Vary selection matches the request (marked used); when none
        does, one that does not (so lookup says ``vary-miss``); nothing stored: [].
        """
        found = self._keys.get(key)
        if found is None:
            return []
        self._keys.move_to_end(key)
        if not isinstance(found, _Variants):
            return [found.entry]  # the common case: one response, no Vary
        by_variant = found.by_variant
        matches: list[policy.Entry] = []
        for fields in found.fields:
            stored = by_variant.get(variant_bytes(secondary_key(fields, req_headers)))
            if stored is not None and stored.entry.vary_fields == fields:
                by_variant.move_to_end(stored.variant)
                matches.append(stored.entry)
        if not matches and by_variant:
            return [next(iter(by_variant.values())).entry]
        return matches

    def find(self, key: bytes, entry: policy.Entry) -> S | None:
        """The stored value holding ``entry`` (as returned by ``select``)."""
        found = self._keys.get(key)
        if found is None:
            return None
        if not isinstance(found, _Variants):
            return found if found.entry is entry else None
        stored = found.by_variant.get(variant_bytes(entry.vary))
        if stored is not None and stored.entry is entry:
            return stored
        for stored in found.by_variant.values():  # Vary: * entries are filed under b""
            if stored.entry is entry:
                return stored
        return None

    def remember(self, key: bytes, stored: S) -> list[bytes]:
        """Add or replace a variant as the most recently used; the keys let go to make room."""
        found = self._keys.get(key)
        if found is not None:
            self._keys.move_to_end(key)
        plain = not stored.variant and stored.entry.vary_fields == ()
        if found is None and plain or (found is not None and not isinstance(found, _Variants)
                                       and plain and found.variant == b""):
            self._keys[key] = stored
        else:
            if not isinstance(found, _Variants):
                many: _Variants[S] = _Variants()
                if found is not None:
                    many.add(found)
                self._keys[key] = found = many
            found.add(stored)
            while len(found.by_variant) > self.max_variants:
                found.remove(next(iter(found.by_variant)))
        dropped: list[bytes] = []
        while len(self._keys) > self.max_keys:
            dropped.append(self._keys.popitem(last=False)[0])
        return dropped

    def drop(self, key: bytes, variant: bytes) -> None:
        """A store evicted one variant."""
        found = self._keys.get(key)
        if found is None:
            return
        if isinstance(found, _Variants):
            found.remove(variant)
            if not found.by_variant:
                del self._keys[key]
        elif found.variant == variant:
            del self._keys[key]

    def pop(self, key: bytes) -> None:
        self._keys.pop(key, None)

    def keys_with_prefix(self, prefix: bytes) -> list[bytes]:
        return [k for k in self._keys if k.startswith(prefix)]

