"""Reverse-proxy ROUTE phases (pure): the real client behind trusted proxies, then
the route table lookup.

The path is put in normal form first (`paths.normalize`, per
``reverse.merge_slashes`` / ``reverse.escaped_slashes``) and that one path is
both matched and forwarded (and offered to redirects as ``{path}``/``{uri}``):
a backend can never act on a different path than the route that let it through.

The upstream server itself is chosen later, at dial time, by the group's
balancer: a retry must be able to pick again without routing again.
"""

from __future__ import annotations

from ferryman.errors import ClientProtocolError, RouteNotFound
from ferryman.http1.events import Headers, RequestHead
from ferryman.http1.headers import forward_request_headers, upgrade_offer
from ferryman.pipeline import respond
from ferryman.pipeline.context import RequestContext
from ferryman.pipeline.route.forwarded import Chain, add_forwarded, read_chain, real_client
from ferryman.pipeline.route.paths import normalize
from ferryman.pipeline.route.plan import ProxyAction, RedirectAction, ReversePlan
from ferryman.pipeline.route.table import rewrite_path
from ferryman.pipeline.stage import CONTINUE, Decision, Phase, Proxy, Respond


def _split_target(target: bytes) -> tuple[bytes, bytes]:
    if not target.startswith(b"/"):
        if target == b"*":
            return b"*", b""
        raise ClientProtocolError("a reverse proxy takes origin-form request targets")
    path, sep, query = target.partition(b"?")
    return path, (b"?" + query if sep else b"")


def trusted_client(rev: ReversePlan) -> Phase | None:
    """The phase that reads the client a trusted proxy names (X-Forwarded-For /
    Forwarded) into ``ctx.client_ip``; None (not in the list) without trusted proxies."""
    trusted = rev.trusted
    if trusted is None:
        return None
    allows, names = trusted.allows, rev.forwarded_from

    def read_trusted_chain(ctx: RequestContext) -> Decision:
        client = ctx.client
        ok = client.memo.get(read_trusted_chain)
        if ok is None:  # once per connection and Plan
            ok = client.memo[read_trusted_chain] = allows(client.peer)
        if ok:
            ctx.incoming = incoming = read_chain(ctx.head.headers, names)
            ctx.client_ip = real_client(incoming, client.peer, allows)
        return CONTINUE

    return read_trusted_chain


def route(rev: ReversePlan) -> Phase:
    def route_reverse_phase(ctx: RequestContext) -> Decision:
        client = ctx.client
        try:
            decision = route_reverse(rev, ctx.head, client.peer, client.tls, ctx.incoming, ctx.client_ip)
        except (ClientProtocolError, RouteNotFound) as exc:
            return Respond.refuse(exc)
        if isinstance(decision, Proxy):
            ctx.route = decision.route
            ctx.proxy = decision
            return CONTINUE
        ctx.route = decision.route
        return decision

    return route_reverse_phase


def route_reverse(
    rev: ReversePlan, head: RequestHead, peer: str, tls: bool, incoming: Chain | None = None, client: str = ""
) -> Proxy | Respond:
    """``peer``: the TCP (or PROXY) peer; ``incoming``: the hops a trusted peer reported
    (None if it is not trusted); ``client``: the real client worked out from them.
    Raises `ClientProtocolError` / `RouteNotFound` (the phase turns them into refusals)."""
    path, query = _split_target(head.target)
    path = normalize(path, rev.paths)
    route = rev.table.lookup(head.host, head.method, path, head.headers, normal=True)
    if route is None:
        shown = (head.host or b"").decode("latin-1")
        raise RouteNotFound(f"no route for {shown}{path.decode('latin-1')}")
    action = route.action
    scheme = "https" if tls else "http"
    if isinstance(action, RedirectAction):
        host_s = (head.host or b"").decode("latin-1")
        location = action.to.format(
            scheme=scheme,
            host=host_s.split(":")[0] if not host_s.startswith("[") else host_s,
            uri=(path + query).decode("latin-1"),
            path=path.decode("latin-1"),
        )
        return Respond(action.status, respond.redirect(action.status, location), route.name)
    if not isinstance(action, ProxyAction):
        data = respond.fixed(action.status, action.content_type, action.body)
        return Respond(action.status, data, route.name)
    upgrade = None if head.upgrade is None else upgrade_offer(head.upgrade, action.upgrades)

    def build() -> Headers:
        headers, _ = forward_request_headers(
            head.headers, head.connection_tokens, rev.via, upgrade=upgrade, version=head.version
        )
        if rev.forwarded_headers:
            headers = add_forwarded(
                headers, peer, scheme, head.host, incoming, (client or peer) if rev.x_real_ip else None
            )
        return headers

    routed = None
    if action.strip_prefix is not None or action.replace_prefix is not None:
        if action.cache_rules is not None:
            routed = path + query  # the cache keys on what the client asked for (README: cache keys)
        path = rewrite_path(path, action.strip_prefix, action.replace_prefix, route.match.path_prefix)
    host_mode = action.host_header
    if host_mode == "preserve":
        host = head.host or b""
    elif host_mode == "upstream":
        host = b""
    else:
        host = host_mode.encode("latin-1")
    return Proxy(
        head.method, path + query, [], host, host_mode == "upstream", None, action.upstream,
        route.name, upgrade is not None, None, action.cache_rules, build, None, routed,
    )
