"""The client connection's life as a table (DESIGN 2.2, 2.6).

Rules this module owns:
- a connection is in exactly one `State`; it changes state only through
  `Downstream.to` (conn/downstream.py), which refuses a move this table does not
  list (a bug, raised as `StateError`);
- each state names the one deadline that applies in it (`TIMEOUT`: a field of
  ``timeouts`` in the Plan, or None when the state has no deadline of the
  connection's own); entering a state arms it, as one `call_later` handle;
- in an *activity* state (`ACTIVITY`) the deadline counts from the last byte
  moved, not from entering the state: when it fires early it is re-armed for
  the remainder;
- `EXPIRED` says what a deadline's expiry means in each state.

    OPEN -> HEAD -> (BODY | UPSTREAM) -> WAIT -> RESPONSE -> IDLE -> HEAD ...
                              +-> WRITING (a cached answer) -> IDLE
            HEAD -> TUNNEL (CONNECT);  WAIT -> TUNNEL (an upgrade's 101)
    any -> CLOSED
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final


class State(IntEnum):
    OPEN = 0  # accepted, no byte read yet
    IDLE = 1  # between requests (keep-alive)
    HEAD = 2  # reading a request head
    BODY = 3  # reading the request body (buffered, or streamed upstream)
    UPSTREAM = 4  # routed, body complete: cache lookup, queue or dial under way
    WAIT = 5  # the whole request is upstream: waiting for the response head
    RESPONSE = 6  # relaying the upstream's response
    WRITING = 7  # writing ferryman's own or a cached answer
    TUNNEL = 8  # CONNECT or an upgrade: bytes relayed (conn/tunnel.py)
    CLOSED = 9


class StateError(RuntimeError):
    """A state change the table does not allow: a bug in the connection code."""


S = State
_ALL = frozenset(State)

# The one deadline of each state: a `TimeoutsPlan` field, or None.  OPEN counts the
# client_header deadline from the accept (a client that never speaks is closed).
TIMEOUT: Final[dict[State, str | None]] = {
    S.OPEN: "client_header",
    S.IDLE: "client_idle",
    S.HEAD: "client_header",
    S.BODY: "client_body",
    S.UPSTREAM: None,  # the dial and the queue have deadlines of their own
    S.WAIT: "upstream_header",
    S.RESPONSE: "upstream_idle",
    S.WRITING: None,  # the client's own pace: backpressure, not a deadline
    S.TUNNEL: None,  # the tunnel's idle deadline (tunnel_idle) is the tunnel's
    S.CLOSED: None,
}

ACTIVITY: Final = frozenset({S.BODY, S.RESPONSE})

# What a deadline's expiry means: close quietly, or fail the exchange (with the error's
# status when no response byte was written yet).
EXPIRED: Final[dict[State, str]] = {
    S.OPEN: "close",
    S.IDLE: "close",
    S.HEAD: "timed out reading the request header",
    S.BODY: "timed out reading the request body",
    S.WAIT: "upstream sent no response within {t:g}s",
    S.RESPONSE: "upstream stalled while sending the response",
}

# Allowed moves.  A state may always move to CLOSED, and to itself (re-armed).  The
# next pipelined request starts straight from where the last one ended (-> BODY,
# UPSTREAM, TUNNEL, or IDLE after ferryman's own answer), without passing IDLE.
_NEXT_REQUEST = frozenset({S.BODY, S.UPSTREAM, S.TUNNEL, S.IDLE})
NEXT: Final[dict[State, frozenset[State]]] = {
    S.OPEN: frozenset({S.HEAD}),
    S.IDLE: frozenset({S.HEAD}),
    # routed: body to read (BODY) or not (UPSTREAM); CONNECT (TUNNEL); answered here (IDLE)
    S.HEAD: frozenset({S.BODY, S.UPSTREAM, S.TUNNEL, S.IDLE}),
    # the body ends (WAIT), the upstream answers early (RESPONSE), the cache answers
    # (WRITING, or IDLE for its own short answers), a 101 to an upgrade (TUNNEL)
    S.BODY: frozenset({S.WAIT, S.RESPONSE, S.WRITING, S.TUNNEL, S.IDLE}),
    S.UPSTREAM: frozenset({S.WAIT, S.WRITING}) | _NEXT_REQUEST,
    # a 101 (TUNNEL); stale-if-error or a validation's 304 (WRITING, IDLE)
    S.WAIT: frozenset({S.RESPONSE, S.WRITING}) | _NEXT_REQUEST,
    S.RESPONSE: _NEXT_REQUEST,
    S.WRITING: _NEXT_REQUEST,
    S.TUNNEL: frozenset(),
    S.CLOSED: frozenset(),
}


def allowed(old: State, new: State) -> bool:
    return new is S.CLOSED or new is old or new in NEXT[old]


assert set(NEXT) == _ALL and set(TIMEOUT) == _ALL

# The tables above, as the connection reads them on every move: indexed by the state's
# number, moves as bit masks (an enum member hashes in Python, an int index does not).
MOVES: Final[tuple[int, ...]] = tuple(
    sum(1 << n for n in State if allowed(s, n)) for s in State
)
FIELD: Final[tuple[str | None, ...]] = tuple(TIMEOUT[s] for s in State)
IS_ACTIVITY: Final[tuple[bool, ...]] = tuple(s in ACTIVITY for s in State)

Deadlines = tuple[float | None, ...]


def deadlines(timeouts: object) -> Deadlines:
    """Each state's deadline in seconds under one Plan's ``timeouts`` (None: no deadline);
    worked out once per Plan."""
    return tuple(None if f is None else float(getattr(timeouts, f)) for f in FIELD)
