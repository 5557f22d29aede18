"""ADMIT phase (forward): the proxy auto-config file, served by the forward listener itself.

``GET /proxy.pac`` and ``GET /wpad.dat`` (origin-form: a request to the proxy, not
through it; a query is ignored) are answered with the PAC text built once per Plan
(`pipeline/pac.py`: loopback, ``forward.direct_networks`` and ``forward.direct``
domains go ``DIRECT``, everything else through ``PROXY host:port``), as
``application/x-ns-proxy-autoconfig``.  The proxy it names is the one the browser
reached to fetch it (its Host field: port 80 when the field has none), so every
listener, and one listening on every address, names an address its clients can use;
the listener's own address only for a request without Host (HTTP/1.0).  The answers
are kept per Host value (bounded).  Browsers fetch it without credentials, so
the phase runs before proxy authentication; it runs after ``forward.clients`` (who may
not use the proxy gets no PAC file either).  Any other origin-form request goes on to
the target phase, which refuses it (400) as before.
"""

from __future__ import annotations

from ferryman.pipeline import respond
from ferryman.pipeline.context import RequestContext
from ferryman.pipeline.pac import CONTENT_TYPE, PATHS, proxy_directive, with_proxy
from ferryman.pipeline.route.plan import ForwardPlan
from ferryman.pipeline.stage import CONTINUE, Decision, Phase, Respond

_SLASH = ord("/")
_MEMO = 256  # distinct Host values kept (a few per network in practice)


def _proxy_for(host: bytes) -> str | None:
    """``PROXY host:port`` for a Host field (checked by the parser), None if unusable."""
    h = host.decode("ascii", "replace")
    name, port = h, 80
    if not h.endswith("]") and ":" in h:
        name, _, p = h.rpartition(":")
        if not p.isdigit():
            return None
        port = int(p)
    try:
        return proxy_directive(name, port)
    except ValueError:
        return None


def phase(fwd: ForwardPlan) -> Phase | None:
    text = fwd.control.pac
    if not text:
        return None
    def answers(js: str) -> tuple[bytes, bytes]:
        body = js.encode("utf-8")
        full = respond.fixed(200, CONTENT_TYPE, body)
        return full, full[: len(full) - len(body)]

    default = answers(text)
    by_host: dict[bytes, tuple[bytes, bytes]] = {}
    paths = frozenset(PATHS)

    def serve_pac(ctx: RequestContext) -> Decision:
        head = ctx.head
        target = head.target
        if not target or target[0] != _SLASH:
            return CONTINUE  # absolute-form or authority-form: a proxy request (the usual case)
        if target.partition(b"?")[0] not in paths or head.method not in ("GET", "HEAD"):
            return CONTINUE
        host = head.host
        got = default if host is None else by_host.get(host)
        if got is None:
            assert host is not None
            directive = _proxy_for(host)
            got = default if directive is None else answers(with_proxy(text, directive))
            if len(by_host) >= _MEMO:
                by_host.clear()
            by_host[host] = got
        return Respond(200, got[0] if head.method == "GET" else got[1])

    return serve_pac
