"""Phases and their decisions: the request's path as an ordered list of functions.

A *phase* takes the request context and returns a Decision (DESIGN 2.9):
  - `CONTINUE`: go on with the next phase;
  - `Respond`: answer from ferryman (bytes from `pipeline/respond.py`), or refuse
    with an error of the one table (``error``; the connection answers and closes);
  - `Connect`: open a CONNECT tunnel;
  - `CacheLookup`: the cache phase applies: the connection consults the cache,
    which says `TAKEN` (it answers: hit, follower, purge) or `PROXY` (go on
    upstream), the two values of `pipeline/cache/action.py`;
  - `Authenticate`: a password must be checked, which is CPU work (bcrypt): the
    connection runs the check off the event loop, hands the result to
    ``resume`` on the loop, and, when that continues, runs the phases after
    the one that asked (`run_after`).
A phase never returns None or a bool, and never raises to refuse.  The route phase
puts its `Proxy` on the context (``ctx.proxy``) and continues, so the cache phase
can see it; when every phase continued, the connection sends ``ctx.proxy`` on.

*Post-resolve* phases (`AddrPhase`) run on the addresses a name resolved to,
before one of them is dialled: destination ``networks`` rules, loops to
ferryman itself, and (issue 12) the SSRF guard.  They return the addresses
that may be dialled, or `Respond`.

The lists are compiled once per Plan and listener mode (`conn/phases.py`); a
phase that does not apply to a listener is not in its list.  `run` is the one
runner.  The log phases run once at the end of every exchange, with the error
if there was one (the connection calls them: its exchange may end long after
the runner returned).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ferryman.errors import FerrymanError
from ferryman.http1.events import RequestHead
from ferryman.pipeline.admit.credentials import Verify
from ferryman.pipeline.context import Outcome, RequestContext
from ferryman.pipeline.route.action import Connect, Proxy
from ferryman.upstream.dial import Addr

__all__ = [
    "CONTINUE", "AddrPhase", "Authenticate", "CacheLookup", "Connect", "Continue", "Decision", "LogPhase",
    "Phase", "Phases", "Proxy", "Respond", "run", "run_after", "run_resolved",
]


class Continue:
    """Go on with the next phase (the one instance is `CONTINUE`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "CONTINUE"


CONTINUE: Final = Continue()


@dataclass(frozen=True, slots=True)
class Respond:
    """Answer from ferryman: ``data`` (built by `pipeline/respond.py`), or, with ``error``,
    refuse the request: the connection answers from the error table and closes."""

    status: int
    data: bytes = b""
    route: str = ""
    error: FerrymanError | None = None
    close: bool = False  # ``data`` says Connection: close: the connection ends after it
    why: str = ""  # a refusal written as ``data`` (407, 429): the log's error field

    @staticmethod
    def refuse(exc: FerrymanError) -> Respond:
        return Respond(exc.status, b"", "", exc)


@dataclass(frozen=True, slots=True)
class CacheLookup:
    """The cache phase applies to this request: look ``ctx.proxy`` up under ``scheme``."""

    scheme: str


@dataclass(frozen=True, slots=True)
class Authenticate:
    """Run ``verify_password(step.entry, step.password)`` off the loop, then call
    ``resume(ctx, step, ok)`` on the loop; if that continues, go on after ``phase``."""

    step: Verify
    resume: Callable[[RequestContext, Verify, bool | None], Decision]  # None: not checked
    phase: Phase


Decision = Continue | Respond | Connect | CacheLookup | Proxy | Authenticate
Phase = Callable[[RequestContext], Decision]
AddrPhase = Callable[[RequestContext, str, int, list[Addr]], "list[Addr] | Respond"]
LogPhase = Callable[[RequestContext, Outcome], None]


@dataclass(frozen=True, slots=True)
class Phases:
    """One listener mode's compiled phases under one Plan.

    ``request`` holds every request phase; ``absolute``, ``connect`` and ``origin``
    hold those that apply to a request target of that form (RFC 9112 3.2: a phase
    for CONNECT only, such as the safe-port check, is not in the others, and costs
    their requests nothing).  Each is ``request`` when not given."""

    request: tuple[Phase, ...]  # admit, route, cache: up to the first decision
    resolved: tuple[AddrPhase, ...] = ()  # on resolved addresses, before dialling
    log: tuple[LogPhase, ...] = ()  # at the end of every exchange
    absolute: tuple[Phase, ...] | None = None  # GET http://host/path (and ``*``)
    connect: tuple[Phase, ...] | None = None  # CONNECT host:port
    origin: tuple[Phase, ...] | None = None  # GET /path

    def __post_init__(self) -> None:
        for name in ("absolute", "connect", "origin"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, self.request)

    def for_head(self, head: RequestHead) -> tuple[Phase, ...]:
        """The request phases for ``head``'s form of target."""
        if head.method == "CONNECT":
            out = self.connect
        elif head.target[:1] == b"/":
            out = self.origin
        else:
            out = self.absolute
        assert out is not None
        return out


def run(phases: tuple[Phase, ...], ctx: RequestContext) -> Decision:
    """Run ``phases`` in order up to the first one that does not continue; when all
    continue, the route's `Proxy` (``ctx.proxy``), or `CONTINUE` if there is none."""
    for phase in phases:
        decision = phase(ctx)
        if decision is not CONTINUE:
            return decision
    proxy = ctx.proxy
    return CONTINUE if proxy is None else proxy


def run_after(phases: tuple[Phase, ...], after: Phase, ctx: RequestContext) -> Decision:
    """`run` the phases that follow ``after`` (a phase that suspended the request)."""
    return run(phases[phases.index(after) + 1 :], ctx)


def run_resolved(
    phases: tuple[AddrPhase, ...], ctx: RequestContext, host: str, port: int, addrs: list[Addr]
) -> list[Addr] | Respond:
    """The addresses of ``host`` that every post-resolve phase lets through, or the refusal."""
    for phase in phases:
        out = phase(ctx, host, port, addrs)
        if isinstance(out, Respond):
            return out
        addrs = out
    return addrs
