"""ADMIT phase (forward): CONNECT only to the safe ports (``forward.connect_ports``)."""

from __future__ import annotations

from ferryman.errors import Forbidden
from ferryman.pipeline.context import RequestContext
from ferryman.pipeline.stage import CONTINUE, Decision, Phase, Respond


def phase(connect_ports: frozenset[int]) -> Phase:
    def admit_connect_port(ctx: RequestContext) -> Decision:
        t = ctx.target
        if t is None or ctx.head.method != "CONNECT" or t.port in connect_ports:
            return CONTINUE
        why = f"CONNECT to port {t.port} is not allowed (rule: forward.connect_ports)"
        return Respond.refuse(Forbidden(why))

    return admit_connect_port
