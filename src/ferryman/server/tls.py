"""Server-side TLS for listeners: one context per certificate, chosen by SNI.

TLS 1.2 is the floor by default (configurable to 1.3); ALPN offers http/1.1
only, since ferryman speaks HTTP/1.1 to clients.  A client whose SNI matches
no certificate gets the first one, as nginx's default server does.

Certificates reload with the config without closing the listening socket:
`ServerTls.update` builds every new context first (so a bad file refuses the
reload), then loads the first certificate into the context the socket uses
and swaps the SNI table; handshakes already done keep their certificate.
"""

from __future__ import annotations

import ssl

from ferryman.pipeline.plan import TlsPlan


def _version(min_version: str) -> ssl.TLSVersion:
    return ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2


def _context(cert: str, key: str, min_version: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _version(min_version)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class ServerTls:
    def __init__(self, plan: TlsPlan) -> None:
        first = plan.certificates[0]
        self.default = _context(first.cert, first.key, plan.min_version)
        self.plan = plan
        self._exact: dict[str, ssl.SSLContext] = {}
        self._wildcard: dict[str, ssl.SSLContext] = {}
        self._build(plan, install=False)
        self.default.sni_callback = self._pick

    def update(self, plan: TlsPlan) -> None:
        """Adopt new certificates; raises (ssl.SSLError, OSError) leaving the old ones in place.

        Always re-reads the files: a renewed certificate keeps its path."""
        self._build(plan, install=True)
        self.plan = plan

    def _build(self, plan: TlsPlan, install: bool) -> None:
        contexts = [(c, _context(c.cert, c.key, plan.min_version)) for c in plan.certificates]
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: dict[str, ssl.SSLContext] = {}
        for i, (cert, ctx) in enumerate(contexts):
            target = self.default if i == 0 else ctx
            for name in cert.names:
                if name.startswith("*."):
                    wildcard.setdefault(name[2:], target)
                else:
                    exact.setdefault(name, target)
        if install:
            first = plan.certificates[0]
            self.default.minimum_version = _version(plan.min_version)
            self.default.load_cert_chain(first.cert, first.key)
        self._exact, self._wildcard = exact, wildcard

    def _pick(self, sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        if not name:
            return
        name = name.lower().rstrip(".")
        ctx = self._exact.get(name)
        if ctx is None:
            _, _, parent = name.partition(".")
            ctx = self._wildcard.get(parent)
        if ctx is not None and ctx is not self.default:
            sock.context = ctx
