"""A forward answer from the cache and the destination rules judged on the address.

Rules this module owns:
- a forward request whose pre-resolve phases left an address check
  (``Proxy.address_check``: ``networks`` rules, the SSRF guard) is answered from the
  cache (hit, stale, follower of a fill) only once its next hop's addresses pass the
  post-resolve phases (`Phases.resolved`), as a miss's do before it dials
  (`conn/relay.py`); Squid judges ``dst`` ACLs on hits too.  So an entry stored before
  a reload added a ``deny: {networks: ...}`` rule, or for a name that now resolves into
  a denied network, is not served;
- a refusal is answered as the miss's would be: the same error (403, 508), or the DNS
  failure (502);
- the addresses come from the resolver's cache when it has them (no task, no lookup);
  else they are looked up on the loop's resolver (never sync DNS) and the request is
  decided again;
- requests without an address check never come here: they pay nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ferryman.conn.exchange import Exchange
from ferryman.errors import FerrymanError
from ferryman.pipeline.cache.action import PROXY, TAKEN, CacheAction
from ferryman.pipeline.stage import Proxy, Respond, run_resolved
from ferryman.upstream.dial import Addr, Resolver

if TYPE_CHECKING:
    from ferryman.conn.client import ClientConn


def _refusal(ex: Exchange, host: str, port: int, addrs: list[Addr]) -> FerrymanError | None:
    phases = ex.phases
    assert phases is not None
    verdict = run_resolved(phases.resolved, ex.ctx, host, port, addrs)
    if not isinstance(verdict, Respond):
        return None
    assert verdict.error is not None
    return verdict.error


def admit(
    ds: ClientConn, ex: Exchange, d: Proxy, resolver: Resolver, decide_again: Callable[[], CacheAction]
) -> CacheAction | None:
    """Before answering ``ex`` from the cache: None when its next hop's addresses, known
    to the resolver, pass the post-resolve phases; `TAKEN` when they are refused (the
    error is answered now) or must be looked up first (then ``decide_again`` runs)."""
    assert d.next_hop is not None
    _, host, port = d.next_hop
    addrs = resolver.known(host, port, ds.loop.time())
    if addrs is None:
        ds.loop.create_task(_look_up(ds, ex, host, port, resolver, decide_again))
        return TAKEN
    err = _refusal(ex, host, port, addrs)
    if err is None:
        return None
    ds.fail(ex, err)
    return TAKEN


async def _look_up(
    ds: ClientConn, ex: Exchange, host: str, port: int, resolver: Resolver,
    decide_again: Callable[[], CacheAction],
) -> None:
    try:
        err = _refusal(ex, host, port, await resolver.resolve(host, port))
    except FerrymanError as exc:  # the name does not resolve: as the miss's dial fails
        err = exc
    if ds.closed or ex is not ds.cur:
        return
    if err is not None:
        ds.fail(ex, err)
    elif decide_again() is PROXY:
        ds.responder.resume_proxy(ex)
