"""ADMIT phases (forward): requests that would come back to ferryman (508).

- `via`: our own Via entry came back (a loop through other proxies); not in the
  list when Via is off;
- `resolved` (post-resolve): the address about to be dialled is one of our own
  listeners (a loop through DNS or an IP literal), the parent proxy included.
"""

from __future__ import annotations

from collections.abc import Callable

from ferryman.errors import LoopDetected
from ferryman.http1.headers import via_names, via_token
from ferryman.pipeline.context import RequestContext
from ferryman.pipeline.stage import CONTINUE, AddrPhase, Decision, Phase, Respond
from ferryman.upstream.dial import Addr


def via(own: bytes | None) -> Phase | None:
    if own is None:
        return None
    token = via_token(own)

    def admit_no_via_loop(ctx: RequestContext) -> Decision:
        seen = ctx.head.via
        if seen is None or not via_names(seen, token):
            return CONTINUE
        what = " on CONNECT" if ctx.head.method == "CONNECT" else ""
        return Respond.refuse(LoopDetected(f"forwarding loop detected (our own Via came back{what})"))

    return admit_no_via_loop


def resolved(parent: tuple[str, int] | None, is_self: Callable[[str, int], bool]) -> AddrPhase:
    def admit_not_self(ctx: RequestContext, host: str, port: int, addrs: list[Addr]) -> list[Addr] | Respond:
        if not any(is_self(str(a[1][0]), port) for a in addrs):
            return addrs
        if ctx.head.method != "CONNECT":
            what = "request aimed at ferryman itself"
        elif parent is not None:
            what = "parent proxy is ferryman itself"
        else:
            what = "CONNECT aimed at ferryman itself"
        return Respond.refuse(LoopDetected(f"{what} ({host}:{port})"))

    return admit_not_self
