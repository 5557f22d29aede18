"""What the cache decides at the points where the connection hands it an exchange.

Never a bool: each answer is a named value, compared with ``is`` against the
module-level constants below (a global load, not an attribute lookup on the enum
class), and mypy's truthy-bool check refuses one where a bool is expected.

Request side, `CacheAction`: what the cache does with a request the cache phase
handed it (a `CacheLookup`; ``Cache.on_request`` in `conn/cache_flow.py`):
  - `TAKEN`: the cache took the exchange over.  It answers it (a hit, a follower of a
    fill in flight, a purge, the 504 of only-if-cached), or it first loads a stored
    head from a persistent store; then it answers, or sends the request upstream
    itself (``ClientConn.resume_proxy``).  The connection does nothing more with it.
  - `PROXY`: the connection sends the request upstream now; the cache watches the
    response (stores it, feeds a fill, validates a stale entry, invalidates).

Response side, `CacheReply`: who answers the client once the upstream replied to
the cache's validation (``Cache.takeover``, ``Cache.on_not_modified``) or failed
(``Cache.serve_stale_on_error``):
  - `ANSWERS`: the cache answers the client from its stored entry (freshened by a
    304, or stale under stale-if-error).  The connection writes nothing to the client
    for this exchange; it only reads the upstream's response to its end (so the
    upstream connection can be reused) or has nothing more to do (the failure).
  - `PASSES`: the cache does not answer: the connection relays the upstream's
    response as it came, or answers with its error.

When the client leaves in the middle of a fill (`Orphan`,
``Cache.continue_without_client``):
  - `ADOPTED`: other clients follow the fill, so the cache keeps reading the
    upstream for them (`conn/orphan_fill.py`): the connection lets go of the
    upstream socket without closing it and keeps the fill.
  - `ABANDONED`: nobody else waits for it: the connection aborts the upstream
    socket and the fill as usual.

Pure.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

__all__ = [
    "ABANDONED", "ADOPTED", "ANSWERS", "PASSES", "PROXY", "TAKEN", "CacheAction", "CacheReply", "Orphan",
]


class CacheAction(Enum):
    """The cache's answer to a `CacheLookup` (see the module docstring)."""

    TAKEN = "taken"  # the cache answers, or will send the request upstream itself
    PROXY = "proxy"  # go upstream now; the cache watches the response

    def __repr__(self) -> str:
        return self.name


class CacheReply(Enum):
    """Who answers the client after the cache's validation was replied to or failed."""

    ANSWERS = "answers"  # the cache answers from its entry; the connection writes nothing
    PASSES = "passes"  # the connection relays the upstream's response, or sends its error

    def __repr__(self) -> str:
        return self.name


class Orphan(Enum):
    """What becomes of a fill whose client left (see the module docstring)."""

    ADOPTED = "adopted"  # the cache reads on for the followers: let go of the upstream socket
    ABANDONED = "abandoned"  # nobody waits: abort the upstream socket and the fill

    def __repr__(self) -> str:
        return self.name


TAKEN: Final = CacheAction.TAKEN
PROXY: Final = CacheAction.PROXY
ANSWERS: Final = CacheReply.ANSWERS
PASSES: Final = CacheReply.PASSES
ADOPTED: Final = Orphan.ADOPTED
ABANDONED: Final = Orphan.ABANDONED
