"""Forward-proxy ROUTE phases (pure): parse the target, then decide where it goes.

`target` parses the request target into ``ctx.target`` (authority-form for
CONNECT, absolute-form otherwise); the admit phases then judge it (safe ports,
destination rules); `route` turns it into a `Connect` or puts a `Proxy` on the
context for the cache phase and the connection.
"""

from __future__ import annotations

from ferryman.errors import ClientProtocolError
from ferryman.http1.headers import forward_request_headers, upgrade_offer
from ferryman.pipeline.context import RequestContext
from ferryman.pipeline.route.plan import ForwardPlan
from ferryman.pipeline.route.router import parse_absolute, parse_authority
from ferryman.pipeline.stage import CONTINUE, Connect, Decision, Phase, Proxy, Respond


def parse_target(ctx: RequestContext) -> Decision:
    head = ctx.head
    try:
        ctx.target = parse_authority(head.target) if head.method == "CONNECT" else parse_absolute(head.target)
    except ClientProtocolError as exc:
        return Respond.refuse(exc)
    return CONTINUE


def route(fwd: ForwardPlan) -> Phase:
    via, parent, upgrades, rules = fwd.via, fwd.parent, fwd.upgrades, fwd.cache_rules
    parent_auth = (b"Proxy-Authorization", fwd.parent_auth) if fwd.parent_auth is not None else None

    def route_forward(ctx: RequestContext) -> Decision:
        head = ctx.head
        t = ctx.target
        assert t is not None  # the target phase comes first
        if head.method == "CONNECT":
            return Connect(t, ctx.address_check)
        upgrade = None if head.upgrade is None else upgrade_offer(head.upgrade, upgrades)
        headers, _ = forward_request_headers(
            head.headers, head.connection_tokens, via, upgrade=upgrade, version=head.version
        )
        if parent is not None:
            if parent_auth is not None:
                headers.append(parent_auth)  # the parent's own credentials, never the client's
            next_hop = ("parent", parent[0], parent[1])
            req_target = b"%s://%s%s" % (t.scheme.encode(), t.authority, t.path)
            tls_name = None
        else:
            next_hop = (t.scheme, t.host, t.port)
            req_target = t.path
            tls_name = t.host if t.scheme == "https" else None
        ctx.proxy = Proxy(
            head.method, req_target, headers, t.authority, False, next_hop, None, "", upgrade is not None,
            tls_name, rules, address_check=ctx.address_check,
        )
        return CONTINUE

    return route_forward
