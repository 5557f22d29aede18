"""URLs lately answered uncacheable, whose misses are not coalesced (pure).

Coalescing makes concurrent misses for one URL wait for the first one's response:
worth it when that response is stored, pure delay when it cannot be (``no-store``,
``private``, a Set-Cookie without explicit freshness...).  A URL that could not be
stored is therefore remembered for `PASS_TTL` seconds (Varnish's "hit-for-miss"):
its misses go upstream at once, side by side, each still a fill of its own, so the
first response that can be stored again is stored and clears the mark.

Bounded: past `MAX_KEYS` marks the table starts again (a mark only saves waiting;
losing one costs one coalesced wait).
"""

from __future__ import annotations

from typing import Final

PASS_TTL: Final = 120.0  # seconds; Varnish's default TTL for hit-for-miss objects
MAX_KEYS: Final = 16_384


class PassMarks:
    __slots__ = ("_until", "ttl", "max_keys")

    def __init__(self, ttl: float = PASS_TTL, max_keys: int = MAX_KEYS) -> None:
        self._until: dict[bytes, float] = {}
        self.ttl = ttl
        self.max_keys = max_keys

    def __len__(self) -> int:
        return len(self._until)

    def mark(self, key: bytes, now: float) -> None:
        """``key``'s response could not be stored."""
        until = self._until
        if len(until) >= self.max_keys and key not in until:
            until.clear()
        until[key] = now + self.ttl

    def clear(self, key: bytes) -> None:
        """``key``'s response was stored: its misses coalesce again."""
        if self._until:
            self._until.pop(key, None)

    def passing(self, key: bytes, now: float) -> bool:
        """Should a miss for ``key`` go upstream without waiting for one in flight?"""
        until = self._until
        if not until:
            return False
        t = until.get(key)
        if t is None:
            return False
        if t > now:
            return True
        del until[key]
        return False
