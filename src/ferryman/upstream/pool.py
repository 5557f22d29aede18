"""Idle upstream connections per origin (pure bookkeeping, no I/O).

Assignment decisions are made here; the caller closes what it is told to close.
Invariants (tested): idle per key <= max_idle; a connection is handed out at
most once; nothing idle longer than idle_timeout survives a `sweep`; only an
`idle_ready` connection (fully read, reading resumed, no handler) is parked.
LIFO reuse keeps the hottest connections warm and lets the cold ones expire.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar


class Pooled(Protocol):
    @property
    def usable(self) -> bool: ...

    @property
    def idle_ready(self) -> bool: ...


C = TypeVar("C", bound=Pooled)


class Pool(Generic[C]):
    __slots__ = ("_idle", "max_idle", "idle_timeout")

    def __init__(self, max_idle: int, idle_timeout: float) -> None:
        self._idle: dict[Hashable, list[tuple[float, C]]] = {}
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout

    def acquire(self, key: Hashable) -> C | None:
        stack = self._idle.get(key)
        while stack:
            _, conn = stack.pop()
            if conn.usable:
                return conn
        return None

    def release(self, key: Hashable, conn: C, now: float) -> bool:
        """Park ``conn``; False means the caller must close it (pool full, or not idle-ready)."""
        if not conn.idle_ready:
            return False
        stack = self._idle.get(key)
        if stack is None:
            stack = self._idle[key] = []
        if len(stack) >= self.max_idle:
            return False
        stack.append((now, conn))
        return True

    def discard(self, key: Hashable, conn: C) -> None:
        stack = self._idle.get(key)
        if stack:
            for i, (_, c) in enumerate(stack):
                if c is conn:
                    del stack[i]
                    return

    def sweep(self, now: float) -> list[C]:
        """Remove and return the connections idle past the timeout or unusable."""
        expired: list[C] = []
        limit = now - self.idle_timeout
        for key in list(self._idle):
            stack = self._idle[key]
            keep = []
            for since, conn in stack:
                if since < limit or not conn.usable:
                    expired.append(conn)
                else:
                    keep.append((since, conn))
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        return expired

    def drain(self) -> list[C]:
        out = [c for stack in self._idle.values() for _, c in stack]
        self._idle.clear()
        return out

    def idle_count(self, key: Hashable | None = None) -> int:
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(s) for s in self._idle.values())
