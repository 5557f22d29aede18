"""URLs lately answered uncacheable, whose misses go straight upstream (pure).

Coalescing makes concurrent misses for one URL wait for the first one's response:
worth it when that response is stored, pure delay when it cannot be (``no-store``,
``private``, a Set-Cookie without explicit freshness...).  A URL whose response
could not be stored is therefore marked for `PASS_TTL` seconds (Varnish's
hit-for-pass): its misses go upstream at once, side by side, as plain proxied
requests that the cache neither waits for nor examines (their answers carry the
Cache-Status of the response that marked the URL, with the reason it gave).

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


class _Mark:
    __slots__ = ("until", "probe", "field")

    def __init__(self, until: float, probe: float, field: bytes) -> None:
        self.until = until
        self.probe = probe
        self.field = field


class PassMarks:
    __slots__ = ("_marks", "ttl", "probe_every", "max_keys")

    def __init__(
        self, ttl: float = PASS_TTL, probe_every: float = PROBE_EVERY, max_keys: int = MAX_KEYS
    ) -> None:
        self._marks: dict[bytes, _Mark] = {}
        self.ttl = ttl
        self.probe_every = probe_every
        self.max_keys = max_keys

    def __len__(self) -> int:
        return len(self._marks)

    def mark(self, key: bytes, now: float, field: bytes = b"") -> None:
        """``key``'s response could not be stored; ``field``: the Cache-Status line it got."""
        marks = self._marks
        if len(marks) >= self.max_keys and key not in marks:
            marks.clear()
        marks[key] = _Mark(now + self.ttl, now + self.probe_every, field)

    def clear(self, key: bytes) -> None:
        """``key``'s response was stored (or purged): its misses are cached again."""
        if self._marks:
            self._marks.pop(key, None)

    def passing(self, key: bytes, now: float) -> bytes | None:
        """The Cache-Status line for this miss for ``key`` if it goes upstream past the
        cache; None for an unmarked key, an expired mark, and the one probe per
        `PROBE_EVERY` of a marked key."""
        marks = self._marks
        if not marks:
            return None
        m = marks.get(key)
        if m is None:
            return None
        if m.until <= now:
            del marks[key]
            return None
        if m.probe <= now:
            m.probe = now + self.probe_every  # this one is examined; the next in a while
            return None
        return m.field
