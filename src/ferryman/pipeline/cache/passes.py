"""URLs lately answered uncacheable, whose misses go straight upstream (pure).

Coalescing makes concurrent misses for one URL wait for the first one's response:
worth it when that response is stored, pure delay when it cannot be (``no-store``,
``private``, a Set-Cookie without explicit freshness...).  A URL whose response
could not be stored is therefore marked for `PASS_TTL` seconds (Varnish's
hit-for-pass): its misses go upstream at once, side by side, as plain proxied
requests that the cache neither waits for nor examines.

A mark is not blind for its whole life: one miss per `PROBE_EVERY` seconds goes the
cache's usual way instead (a fill, its response examined).  If that response can be
stored, it is, and the mark ends; if not, the mark is renewed.  So a URL that turns
cacheable is cached again within about a second, at the cost of one examined
response per second per marked URL.

Times are the caller's clock (seconds).  Bounded: past `MAX_KEYS` marks the table
starts again (a lost mark costs one coalesced wait).
"""

from __future__ import annotations

from typing import Final

PASS_TTL: Final = 120.0  # seconds; Varnish's default TTL for hit-for-pass objects
PROBE_EVERY: Final = 1.0  # seconds between the misses of a marked URL that are examined
MAX_KEYS: Final = 16_384


class PassMarks:
    __slots__ = ("_marks", "ttl", "probe_every", "max_keys")

    def __init__(
        self, ttl: float = PASS_TTL, probe_every: float = PROBE_EVERY, max_keys: int = MAX_KEYS
    ) -> None:
        self._marks: dict[bytes, list[float]] = {}  # key -> [until, next probe]
        self.ttl = ttl
        self.probe_every = probe_every
        self.max_keys = max_keys

    def __len__(self) -> int:
        return len(self._marks)

    def mark(self, key: bytes, now: float) -> None:
        """``key``'s response could not be stored."""
        marks = self._marks
        if len(marks) >= self.max_keys and key not in marks:
            marks.clear()
        marks[key] = [now + self.ttl, now + self.probe_every]

    def clear(self, key: bytes) -> None:
        """``key``'s response was stored (or purged): its misses are cached again."""
        if self._marks:
            self._marks.pop(key, None)

    def passing(self, key: bytes, now: float) -> bool:
        """Should this miss for ``key`` go upstream past the cache?  False for an unmarked
        key, an expired mark, and the one probe per `PROBE_EVERY` of a marked key."""
        marks = self._marks
        if not marks:
            return False
        m = marks.get(key)
        if m is None:
            return False
        if m[0] <= now:
            del marks[key]
            return False
        if m[1] <= now:
            m[1] = now + self.probe_every  # this one is examined; the next in a while
            return False
        return True
