"""CACHE phase: does the cache apply to this request, and under which scheme is it keyed?

The lookup itself may need the store (a persistent entry is loaded on first
sight), so the phase hands a `CacheLookup` to the connection, which consults the
cache (`conn/cache_flow.py`): it takes the exchange over (`action.TAKEN`: hit,
coalesced follower, purge, 504 only-if-cached) or lets the request go on upstream
(`action.PROXY`).  Only in the list of a listener whose Plan has a cache.
"""

from __future__ import annotations

from ferryman.pipeline.context import RequestContext
from ferryman.pipeline.stage import CONTINUE, CacheLookup, Decision, Phase

_HTTP = CacheLookup("http")
_HTTPS = CacheLookup("https")


def phase(reverse: bool) -> Phase:
    def cache_lookup(ctx: RequestContext) -> Decision:
        d = ctx.proxy
        if d is None or d.cache_rules is None or d.upgrade:
            return CONTINUE
        if reverse:
            return _HTTPS if ctx.client.tls else _HTTP
        hop = d.next_hop  # the origin's scheme (a parent is spoken to in http)
        return _HTTPS if hop is not None and hop[0] == "https" else _HTTP

    return cache_lookup
