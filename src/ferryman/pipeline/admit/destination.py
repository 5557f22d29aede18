"""ADMIT phases (forward): the destination rules (``forward.rules``).

Judged on the name before DNS (`phase`); when the verdict depends on the
address the name resolves to (``networks`` conditions), the rest is judged on
each resolved address before one is dialled (`resolved`), so the address the
rules saw is the one connected to (no second lookup: DNS rebinding).  Behind a
parent proxy, which resolves the name itself, networks conditions only ever
see IP literals.  Neither phase is in the list when there are no rules.
"""

from __future__ import annotations

from ferryman.errors import Forbidden
from ferryman.pipeline.admit.acl import AddressCheck, NeedsAddress, Verdict
from ferryman.pipeline.context import RequestContext
from ferryman.pipeline.route.plan import ForwardPlan
from ferryman.pipeline.stage import CONTINUE, AddrPhase, Decision, Phase, Respond
from ferryman.upstream.dial import Addr


def phase(fwd: ForwardPlan) -> Phase | None:
    acl = fwd.acl
    if not acl.rules:
        return None  # none matching allows
    parent = fwd.parent

    def admit_destination(ctx: RequestContext) -> Decision:
        t = ctx.target
        assert t is not None  # the target phase comes first
        method = ctx.head.method
        verdict = acl.check(method, t.host, t.port, t.ip)
        if isinstance(verdict, NeedsAddress):
            if parent is None:
                ctx.address_check = AddressCheck(acl, method, t.host, t.port, verdict.start)
                return CONTINUE
            verdict = acl.check_name_only(method, t.host, t.port)
        if verdict.allowed:
            return CONTINUE
        return Respond.refuse(Forbidden(f"access to {t.host} denied (rule: {verdict.rule})"))

    return admit_destination


def resolved(fwd: ForwardPlan) -> AddrPhase | None:
    if not fwd.acl.rules:
        return None

    def admit_address(ctx: RequestContext, host: str, port: int, addrs: list[Addr]) -> list[Addr] | Respond:
        check = ctx.address_check
        if check is None:
            return addrs
        allowed: list[Addr] = []
        denied: Verdict | None = None
        for a in addrs:
            v = check.verdict(str(a[1][0]))
            if v.allowed:
                allowed.append(a)
            elif denied is None:
                denied = v
        if allowed:
            return allowed  # only allowed addresses are dialled
        rule = denied.rule if denied is not None else "no address"
        return Respond.refuse(Forbidden(f"access to {check.host} denied (rule: {rule})"))

    return admit_address
