"""The phase lists, compiled once per Plan and listener mode (DESIGN 2.9, 2.10).

Each table row builds one phase from the Plan (and the engine's facts in `Env`),
or None when the phase does not apply: it is then not in the list and costs the
listener's requests nothing.  Adding a phase is a module under `pipeline/` and
one row here.  The order is the request's path: admit, route, cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from typing import TYPE_CHECKING

from ferryman.pipeline.admit import access, auth, clients, guard, loop, pac_file, ports, privacy, size
from ferryman.pipeline.cache import stage as cache_stage
from ferryman.pipeline.context import Outcome, RequestContext
from ferryman.pipeline.plan import Plan
from ferryman.pipeline.route import forward, reverse
from ferryman.pipeline.stage import AddrPhase, LogPhase, Phase, Phases

if TYPE_CHECKING:
    from ferryman.conn.auth import AuthRuntime
    from ferryman.observe.access_log import AccessLog
    from ferryman.observe.usage import UserUsage


@dataclass(frozen=True, slots=True)
class Env:
    """What the phases may need besides the Plan: the engine's own facts."""

    cache: bool  # a cache is open
    is_self: Callable[[str, int], bool]  # would ip:port reach ferryman itself?
    access_log: Callable[[], AccessLog]  # the current access log (a reload may replace it)
    auth: AuthRuntime | None = None  # the worker's proxy users and credential cache
    usage: UserUsage | None = None  # requests and bytes per proxy user
    now: Callable[[], float] = monotonic  # the connections' clock (conn/clock.py)


Row = Callable[[Plan, Env], Phase | None]
AddrRow = Callable[[Plan, Env], AddrPhase | None]
LogRow = Callable[[Plan, Env], LogPhase | None]

# The forms of request target (RFC 9112 3.2) a phase may apply to (`Only`).
ABSOLUTE, CONNECT, ORIGIN = "absolute", "connect", "origin"
FORMS = (ABSOLUTE, CONNECT, ORIGIN)


@dataclass(frozen=True, slots=True)
class Only:
    """A row whose phase applies to requests of these target forms only: the lists of
    the other forms leave it out (`Phases.for_head`)."""

    forms: frozenset[str]
    row: Row

    def __call__(self, p: Plan, env: Env) -> Phase | None:
        return self.row(p, env)

FORWARD: list[Row | Only] = [
    lambda p, env: size.phase(p.limits),
    lambda p, env: clients.phase(p.forward),
    Only(frozenset({ORIGIN}), lambda p, env: pac_file.phase(p.forward)),  # GET /proxy.pac
    lambda p, env: loop.via(p.forward.via),
    lambda p, env: forward.parse_target,
    Only(frozenset({CONNECT}), lambda p, env: ports.phase(p.forward.connect_ports)),
    lambda p, env: proxy_auth(p, env),
    lambda p, env: access.phase(p.forward),
    lambda p, env: guard.phase(p.forward, env.is_self),
    lambda p, env: forward.route(p.forward),
    lambda p, env: privacy.phase(p.forward),
    lambda p, env: cache_stage.phase(False) if env.cache and p.forward.cache_rules is not None else None,
]
FORWARD_RESOLVED: list[AddrRow] = [
    lambda p, env: loop.resolved(p.forward.parent, env.is_self),
    lambda p, env: access.resolved(p.forward),
]
REVERSE: list[Row | Only] = [
    lambda p, env: size.phase(p.limits),
    lambda p, env: reverse.trusted_client(p.reverse) if p.reverse is not None else None,
    lambda p, env: reverse.route(p.reverse) if p.reverse is not None else None,
    lambda p, env: cache_stage.phase(True) if env.cache else None,
]
REVERSE_RESOLVED: list[AddrRow] = []  # an upstream group's servers are the config's own
FORWARD_LOG: list[LogRow] = [
    lambda p, env: access_log(env.access_log, env.now, keep_query=p.forward.control.log_query),
    lambda p, env: usage(env.usage) if p.forward.control.auth is not None and env.usage is not None else None,
]
REVERSE_LOG: list[LogRow] = [
    lambda p, env: access_log(env.access_log, env.now),
]


def proxy_auth(p: Plan, env: Env) -> Phase | None:
    """Who the client is (``forward.auth``), before the rules that may ask."""
    ap = p.forward.control.auth
    if ap is None or env.auth is None:
        return None
    return auth.phase(env.auth, ap.challenge)


def compile_phases(plan: Plan, mode: str, env: Env) -> Phases:
    """The phases of a ``mode`` listener under ``plan`` (a reverse listener of a Plan
    without a reverse section routes as a forward proxy, as it always has)."""
    if mode == "reverse" and plan.reverse is not None:
        rows, addr_rows, log_rows = REVERSE, REVERSE_RESOLVED, REVERSE_LOG
    else:
        rows, addr_rows, log_rows = FORWARD, FORWARD_RESOLVED, FORWARD_LOG
    built = [(row(plan, env), row.forms if isinstance(row, Only) else None) for row in rows]
    request = tuple(ph for ph, _ in built if ph is not None)
    form = {
        f: tuple(ph for ph, only in built if ph is not None and (only is None or f in only)) for f in FORMS
    }
    resolved = tuple(ph for ph in (row(plan, env) for row in addr_rows) if ph is not None)
    logs = tuple(ph for ph in (row(plan, env) for row in log_rows) if ph is not None)
    return Phases(request, resolved, logs, form[ABSOLUTE], form[CONNECT], form[ORIGIN])


def access_log(
    current: Callable[[], AccessLog], now: Callable[[], float], keep_query: bool = True
) -> LogPhase:
    """The access-log line of every exchange, with its error if there was one.  Without
    ``keep_query`` (forward mode's default, ``forward.log_query: false``, as Squid's
    ``strip_query_terms``), the target is logged without its query: URLs carry tokens
    and search terms."""

    def log_access(ctx: RequestContext, out: Outcome) -> None:
        lg = current()
        if not lg.enabled:
            return
        head = ctx.head
        target = head.target
        if not keep_query:
            q = target.find(b"?")
            if q >= 0:
                target = target[:q]
        up = out.up
        lg.log(
            ctx.client_ip, ctx.identity.user, head.method, target.decode("latin-1"), head.version,
            out.status, out.bytes_in, out.bytes_out, now() - out.t0,
            up.t_connect, out.t_first, out.cache_result, up.label, out.error,
        )

    return log_access


def usage(table: UserUsage) -> LogPhase:
    """Requests and bytes of each authenticated user, for /status."""
    add = table.add

    def count_usage(ctx: RequestContext, out: Outcome) -> None:
        user = ctx.identity.user
        if user:
            add(user, out.bytes_in, out.bytes_out)

    return count_usage
