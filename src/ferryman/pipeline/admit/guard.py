"""ADMIT phase (forward): the SSRF guard (issue 12 item 3; the table is in `safety.py`).

Loopback, private (RFC 1918), unique-local, link-local (169.254.169.254 included)
and 0.0.0.0/8 destinations are refused unless a rule allows them by network: an
``allow`` rule whose ``networks`` matched the address.  The address judged is the
one dialled: an IP literal here, before anything else (in every spelling: the router
made it canonical); a name after DNS, on each address it resolved to
(`address.AddressCheck`, run by `access.resolved`), so a name that resolves to
127.0.0.1 is refused and cannot be rebound between the check and the connect.

Not in the list in laptop mode (every ``forward.clients`` network is loopback, the
built-in default): only this machine's own user can reach the proxy, and may reach
what it can reach anyway.  The proxy's own listeners and admin API are refused in
every mode by the loop phase (`loop.resolved`, 508), which shares `Engine.is_self`.

Behind a parent proxy, which resolves names itself, only IP literals are judged.
"""

from __future__ import annotations

from collections.abc import Callable

from ferryman.pipeline.admit.address import AddressCheck, ssrf_refusal
from ferryman.pipeline.context import RequestContext
from ferryman.pipeline.route.plan import ForwardPlan
from ferryman.pipeline.stage import CONTINUE, Decision, Phase, Respond


def applies(fwd: ForwardPlan) -> bool:
    return not fwd.control.safety.laptop


def phase(fwd: ForwardPlan, is_self: Callable[[str, int], bool]) -> Phase | None:
    if not applies(fwd):
        return None
    guard = fwd.control.safety
    behind_parent = fwd.parent is not None

    def admit_destination_address(ctx: RequestContext) -> Decision:
        t = ctx.target
        assert t is not None  # the target phase comes first
        if t.ip is not None:  # an IP literal: judged now, whatever comes later
            if is_self(t.host, t.port):
                return CONTINUE  # ferryman itself: a loop (508), the loop phase says so
            err = ssrf_refusal(guard, t.host, t.host, t.port, ctx.by_network)
            return CONTINUE if err is None else Respond.refuse(err)
        if behind_parent:
            return CONTINUE  # the parent resolves the name
        check = ctx.address_check
        if check is None:
            ctx.address_check = AddressCheck(t.host, t.port, guard=guard, by_network=ctx.by_network)
        elif check.guard is None:
            ctx.address_check = AddressCheck(
                check.host, check.port, check.rules, check.req, check.start, check.now, guard,
                check.by_network,
            )
        return CONTINUE

    return admit_destination_address
