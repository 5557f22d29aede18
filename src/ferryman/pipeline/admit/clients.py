"""ADMIT phase (forward): may this client use the proxy at all (``forward.clients``)?

Never an open relay: the list is always in a forward listener's phases.  The
answer is worked out once per connection and Plan (a reload may revoke a client).
"""

from __future__ import annotations

from ferryman.errors import Forbidden
from ferryman.pipeline.context import RequestContext
from ferryman.pipeline.route.plan import ForwardPlan
from ferryman.pipeline.stage import CONTINUE, Decision, Phase, Respond


def phase(fwd: ForwardPlan) -> Phase:
    allows = fwd.clients.allows

    def admit_client(ctx: RequestContext) -> Decision:
        client = ctx.client
        ok = client.memo.get(admit_client)
        if ok is None:
            ok = client.memo[admit_client] = allows(client.peer)
        if ok:
            return CONTINUE
        why = f"client {client.peer} may not use this proxy (rule: forward.clients)"
        return Respond.refuse(Forbidden(why))

    return admit_client
