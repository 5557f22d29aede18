"""ADMIT phase (forward): what the origin learns about the client (``forward.anonymity``).

Runs after the route phase built the forwarded fields (``ctx.proxy``) and rewrites
them by the level's policy (`anonymity.py` has the table): ``transparent`` appends the
client's address to X-Forwarded-For and Forwarded, ``elite`` strips Via,
X-Forwarded-For, Forwarded, X-Real-IP and the identifying fields.  Not in the list
at ``anonymous`` (the default: ferryman's Via only, the client's own fields as sent),
which so costs nothing.  A CONNECT tunnel carries no fields of ours.

Whether ferryman adds its Via at all is ``forward.via`` (``elite`` never sends one).
"""

from __future__ import annotations

from ferryman.pipeline.context import RequestContext
from ferryman.pipeline.route.plan import ForwardPlan
from ferryman.pipeline.stage import CONTINUE, Decision, Phase


def phase(fwd: ForwardPlan) -> Phase | None:
    policy = fwd.control.anonymity
    if not policy.add_client and not policy.strip:
        return None
    apply = policy.apply

    def hide_client(ctx: RequestContext) -> Decision:
        proxy = ctx.proxy
        if proxy is None:
            return CONTINUE  # CONNECT: a tunnel, no fields of ours
        build = proxy.build
        ip = ctx.client_ip
        if build is not None:
            proxy.build = lambda: apply(build(), ip)
        else:
            proxy.headers = apply(proxy.headers, ip)
        return CONTINUE

    return hide_client
