"""ADMIT phase: a request body declared larger than ``limits.max_body_size`` (413).

Only a declared Content-Length is judged here; a chunked body is counted as it
arrives (the connection enforces the same limit).  Not in the list without a limit.
"""

from __future__ import annotations

from ferryman.errors import BodyTooLarge
from ferryman.pipeline.context import RequestContext
from ferryman.pipeline.plan import LimitsPlan
from ferryman.pipeline.stage import CONTINUE, Decision, Phase, Respond


def phase(limits: LimitsPlan) -> Phase | None:
    limit = limits.max_body_size
    if not limit:
        return None

    def admit_body_size(ctx: RequestContext) -> Decision:
        length = ctx.head.content_length
        if length > limit:
            return Respond.refuse(BodyTooLarge(f"request body of {length} bytes is over the {limit} limit"))
        return CONTINUE

    return admit_body_size
