"""ADMIT phase (forward): the proxy auto-config file, served by the forward listener itself.

``GET /proxy.pac`` and ``GET /wpad.dat`` (origin-form: a request to the proxy, not
through it; a query is ignored) are answered with the PAC text built once per Plan
(`pipeline/pac.py`: loopback, ``forward.direct_networks`` and ``forward.direct``
domains go ``DIRECT``, everything else through ``PROXY host:port``), as
``application/x-ns-proxy-autoconfig``.  Browsers fetch it without credentials, so
the phase runs before proxy authentication; it runs after ``forward.clients`` (who may
not use the proxy gets no PAC file either).  Any other origin-form request goes on to
the target phase, which refuses it (400) as before.
"""

from __future__ import annotations

from ferryman.pipeline import respond
from ferryman.pipeline.context import RequestContext
from ferryman.pipeline.pac import CONTENT_TYPE, PATHS
from ferryman.pipeline.route.plan import ForwardPlan
from ferryman.pipeline.stage import CONTINUE, Decision, Phase, Respond

_SLASH = ord("/")


def phase(fwd: ForwardPlan) -> Phase | None:
    text = fwd.control.pac
    if not text:
        return None
    body = text.encode("utf-8")
    full = respond.fixed(200, CONTENT_TYPE, body)
    head_only = full[: len(full) - len(body)]
    paths = frozenset(PATHS)

    def serve_pac(ctx: RequestContext) -> Decision:
        head = ctx.head
        target = head.target
        if not target or target[0] != _SLASH:
            return CONTINUE  # absolute-form or authority-form: a proxy request (the usual case)
        if target.partition(b"?")[0] not in paths or head.method not in ("GET", "HEAD"):
            return CONTINUE
        return Respond(200, full if head.method == "GET" else head_only)

    return serve_pac
