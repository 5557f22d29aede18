"""Forward-proxy routing (pure): admit by client and destination, then a Decision."""

from __future__ import annotations

from ferryman.config.compile import ForwardPlan
from ferryman.errors import Forbidden, LoopDetected
from ferryman.http1.events import RequestHead
from ferryman.http1.headers import forward_request_headers, upgrade_offer
from ferryman.pipeline.admit.acl import AddressCheck, NeedsAddress
from ferryman.pipeline.route.router import Target, parse_absolute, parse_authority
from ferryman.pipeline.stage import Connect, Decision, Proxy


def route_forward(fwd: ForwardPlan, head: RequestHead, client_ip: str, client_allowed: bool) -> Decision:
    if not client_allowed:
        raise Forbidden(f"client {client_ip} may not use this proxy (rule: forward.clients)")
    if head.method == "CONNECT":
        if fwd.via is not None:
            _, looped = forward_request_headers(head.headers, head.connection_tokens, fwd.via)
            if looped:
                raise LoopDetected("forwarding loop detected (our own Via came back on CONNECT)")
        target = parse_authority(head.target)
        if target.port not in fwd.connect_ports:
            raise Forbidden(f"CONNECT to port {target.port} is not allowed (rule: forward.connect_ports)")
        return Connect(target, _admit(fwd, "CONNECT", target))
    target = parse_absolute(head.target)
    check = _admit(fwd, head.method, target)
    upgrade = None if head.upgrade is None else upgrade_offer(head.upgrade, fwd.upgrades)
    headers, looped = forward_request_headers(
        head.headers, head.connection_tokens, fwd.via, upgrade=upgrade, version=head.version
    )
    if looped:
        raise LoopDetected("forwarding loop detected (our own Via came back)")
    if fwd.parent is not None:
        next_hop = ("parent", fwd.parent[0], fwd.parent[1])
        req_target = b"%s://%s%s" % (target.scheme.encode(), target.authority, target.path)
        tls_name = None
    else:
        next_hop = (target.scheme, target.host, target.port)
        req_target = target.path
        tls_name = target.host if target.scheme == "https" else None
    return Proxy(
        head.method, req_target, headers, target.authority, False, next_hop, None, "", upgrade is not None,
        tls_name,
        fwd.cache_rules,
        address_check=check,
    )


def _admit(fwd: ForwardPlan, method: str, target: Target) -> AddressCheck | None:
    """Destination rules before DNS: raise if they deny; an `AddressCheck` when the verdict
    depends on the address a name resolves to (the dialler finishes it)."""
    verdict = fwd.acl.check(method, target.host, target.port, target.ip)
    if isinstance(verdict, NeedsAddress):
        if fwd.parent is None:
            return AddressCheck(fwd.acl, method, target.host, target.port, verdict.start)
        # The parent resolves the name: networks conditions only ever see IP literals.
        verdict = fwd.acl.check_name_only(method, target.host, target.port)
    if not verdict.allowed:
        raise Forbidden(f"access to {target.host} denied (rule: {verdict.rule})")
    return None
