"""Server-side TLS for listeners: one context per certificate, chosen by SNI.

TLS 1.2 is the floor by default (configurable to 1.3); ALPN offers http/1.1
only, since ferryman speaks HTTP/1.1 to clients.  A client whose SNI matches
no certificate gets the first one, as nginx's default server does.
"""

from __future__ import annotations

import ssl

from ferryman.config.compile_reverse import TlsPlan


def _context(cert: str, key: str, min_version: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def server_context(plan: TlsPlan) -> ssl.SSLContext:
    contexts = [(c, _context(c.cert, c.key, plan.min_version)) for c in plan.certificates]
    default = contexts[0][1]
    exact: dict[str, ssl.SSLContext] = {}
    wildcard: dict[str, ssl.SSLContext] = {}
    for cert, ctx in contexts:
        for name in cert.names:
            if name.startswith("*."):
                wildcard.setdefault(name[2:], ctx)
            else:
                exact.setdefault(name, ctx)

    def pick(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        if not name:
            return
        name = name.lower().rstrip(".")
        ctx = exact.get(name)
        if ctx is None:
            _, _, parent = name.partition(".")
            ctx = wildcard.get(parent)
        if ctx is not None and ctx is not default:
            sock.context = ctx

    if len(contexts) > 1:
        default.sni_callback = pick
    return default
