"""Idle upstream connections (pure bookkeeping, no I/O).

Assignment decisions are made here; the caller closes what it is told to close.
Invariants (tested): idle per key <= max_idle; idle in total <= max_total; a
connection is handed out at most once; nothing idle longer than idle_timeout
survives a `sweep`; only an `idle_ready` connection (fully read, reading
resumed, no handler) is parked.

Reuse is LIFO per origin (the hottest connections stay warm, the cold ones
expire); eviction is LRU across origins: when the total cap is reached, the
connection idle the longest anywhere makes room.  A proxy visiting thousands
of sites thus holds at most ``max_total`` idle sockets, whatever the number of
origins (the cap is derived from the descriptor limit by the engine).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar


class Pooled(Protocol):
    def __hash__(self) -> int: ...

    @property
    def usable(self) -> bool: ...

    @property
    def idle_ready(self) -> bool: ...


C = TypeVar("C", bound=Pooled)


def auto_max_total(nofile: int) -> int:
    """``pool.max_idle: auto``: a quarter of the descriptor limit, at least 8.  The other
    three quarters are for clients and the upstream connections in use (two per request)."""
    return max(8, nofile // 4)


class Pool(Generic[C]):
    __slots__ = ("_idle", "_lru", "max_idle", "max_total", "idle_timeout")

    def __init__(self, max_idle: int, idle_timeout: float, max_total: int = 1 << 30) -> None:
        self._idle: dict[Hashable, deque[C]] = {}  # per origin, oldest first
        # Every idle connection -> (key, parked at); insertion order is least recently used first.
        self._lru: dict[C, tuple[Hashable, float]] = {}
        self.max_idle = max_idle
        self.max_total = max_total
        self.idle_timeout = idle_timeout

    def acquire(self, key: Hashable) -> C | None:
        stack = self._idle.get(key)
        while stack:
            conn = stack.pop()
            del self._lru[conn]
            if not stack:
                del self._idle[key]
            if conn.usable:
                return conn
        return None

    def park(self, key: Hashable, conn: C, now: float) -> C | None:
        """Park ``conn``.  Returns the connection the caller must close: ``conn`` itself when
        it is refused (its origin's share is full, or it is not idle-ready), the least recently
        used idle one when the total cap made room for ``conn``, or None."""
        if not conn.idle_ready or self.max_total <= 0 or self.idle_count(key) >= self.max_idle:
            return conn
        evicted = self.evict_lru() if len(self._lru) >= self.max_total else None
        stack = self._idle.get(key)  # after the eviction, which may have emptied this origin's
        if stack is None:
            stack = self._idle[key] = deque()
        stack.append(conn)
        self._lru[conn] = (key, now)
        return evicted

    def evict_lru(self) -> C | None:
        """Remove and return the connection idle the longest, across all origins."""
        for conn in self._lru:
            self._remove(conn)
            return conn
        return None

    def trim(self) -> list[C]:
        """After ``max_total`` was lowered: the LRU connections over it, for the caller to close."""
        out = []
        while len(self._lru) > max(self.max_total, 0):
            conn = self.evict_lru()
            assert conn is not None
            out.append(conn)
        return out

    def discard(self, key: Hashable, conn: C) -> None:
        if conn in self._lru:
            self._remove(conn)

    def sweep(self, now: float) -> list[C]:
        """Remove and return the connections idle past the timeout or unusable."""
        limit = now - self.idle_timeout
        expired = [c for c, (_, since) in self._lru.items() if since < limit or not c.usable]
        for conn in expired:
            self._remove(conn)
        return expired

    def drain(self) -> list[C]:
        out = list(self._lru)
        self._idle.clear()
        self._lru.clear()
        return out

    def idle_count(self, key: Hashable | None = None) -> int:
        if key is not None:
            return len(self._idle.get(key, ()))
        return len(self._lru)

    def _remove(self, conn: C) -> None:
        key, _ = self._lru.pop(conn)
        stack = self._idle[key]
        if stack[0] is conn:
            stack.popleft()  # the usual case: the oldest of its origin
        else:
            stack.remove(conn)
        if not stack:
            del self._idle[key]
