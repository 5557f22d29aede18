"""What the cache does with a request the cache phase handed it (a `CacheLookup`).

The connection asks the cache (`conn/cache_flow.py`, ``Cache.on_request``) and gets
one of two values back, never a bool:
  - `TAKEN`: the cache took the exchange over.  It answers it (a hit, a follower of a
    fill in flight, a purge, the 504 of only-if-cached), or it first loads a stored
    head from a persistent store; then it answers, or sends the request upstream
    itself (``ClientConn.resume_proxy``).  The connection does nothing more with it.
  - `PROXY`: the connection sends the request upstream now; the cache watches the
    response (stores it, feeds a fill, validates a stale entry, invalidates).

Pure.  The hot path compares with ``is`` against the module-level `TAKEN` and `PROXY`
(a global load, not an attribute lookup on the enum class).
"""

from __future__ import annotations

from enum import Enum
from typing import Final

__all__ = ["PROXY", "TAKEN", "CacheAction"]


class CacheAction(Enum):
    """The cache's answer to a `CacheLookup` (see the module docstring)."""

    TAKEN = "taken"  # the cache answers, or will send the request upstream itself
    PROXY = "proxy"  # go upstream now; the cache watches the response

    def __repr__(self) -> str:
        return self.name


TAKEN: Final = CacheAction.TAKEN
PROXY: Final = CacheAction.PROXY
