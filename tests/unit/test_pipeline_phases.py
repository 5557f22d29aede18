"""The phase lists (conn/phases.py) and the runner (pipeline/stage.py), without sockets.

Each phase returns an explicit Decision; the lists are compiled once per Plan and
listener mode, and a phase that does not apply is not in its list at all.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ferryman.config.compile import compile_config
from ferryman.config.load import load_text, normalise
from ferryman.conn import phases as table
from ferryman.conn.phases import Env, compile_phases
from ferryman.errors import BodyTooLarge, ClientProtocolError, Forbidden, LoopDetected, RouteNotFound
from ferryman.http1.events import Framing, RequestHead
from ferryman.observe.access_log import AccessLog
from ferryman.pipeline.context import Client, Outcome, RequestContext
from ferryman.pipeline.plan import Plan
from ferryman.pipeline.stage import (
    CONTINUE,
    CacheLookup,
    Connect,
    Decision,
    Proxy,
    Respond,
    run,
    run_resolved,
)
from ferryman.upstream.dial import Addr


def plan_of(text: str) -> Plan:
    return compile_config(normalise(load_text(text, "<test>")), "<test>")


def env(cache: bool = False, is_self: Callable[[str, int], bool] = lambda ip, port: False) -> Env:
    return Env(cache, is_self, lambda: AccessLog(None))  # type: ignore[arg-type]


def head(
    target: bytes, method: str = "GET", host: bytes | None = b"origin.test", length: int = 0,
    headers: list[tuple[bytes, bytes]] | None = None, via: bytes | None = None,
) -> RequestHead:
    framing = Framing.LENGTH if length else Framing.NONE
    return RequestHead(
        method, target, "1.1", headers or [], framing, length, True, host, frozenset(), False, None, via
    )


def ctx_for(plan: Plan, h: RequestHead, peer: str = "127.0.0.1", mode: int = 0) -> RequestContext:
    return RequestContext(Client(plan.listeners[mode], peer, 5555), h, plan)


def names(phases: tuple[object, ...]) -> list[str]:
    return [getattr(p, "__name__", type(p).__name__) for p in phases]


CACHED_REVERSE = (
    "cache: {store: memory}\n"
    "listeners: [{listen: '127.0.0.1:8080', mode: reverse}, {listen: '127.0.0.1:3128'}]\n"
    "upstreams: {o: {servers: [{url: 'http://127.0.0.1:9'}]}}\n"
    "routes:\n"
    "  - {match: {path_prefix: /moved}, redirect: {to: 'https://{host}{uri}', status: 301}}\n"
    "  - {upstream: o, cache: {enabled: true}}\n"
)


# -- the lists ----------------------------------------------------------------------------------


def test_forward_list_in_path_order() -> None:
    p = compile_phases(plan_of(""), "forward", env())
    assert names(p.request) == [
        "admit_client", "serve_pac", "admit_no_via_loop", "parse_target", "admit_connect_port",
        "route_forward",
    ]
    assert names(p.resolved) == ["admit_not_self"]
    assert names(p.log) == ["log_access"]


def test_phases_that_do_not_apply_are_not_in_the_list() -> None:
    bare = compile_phases(plan_of("forward: {via: false}\n"), "forward", env())
    assert "admit_no_via_loop" not in names(bare.request)  # Via off: no loop phase
    assert "admit_body_size" not in names(bare.request)  # no body limit
    assert "cache_lookup" not in names(bare.request)  # no cache
    full = compile_phases(
        plan_of(
            "cache: {store: memory}\nlimits: {max_body_size: 1000}\n"
            "forward: {rules: [{deny: {networks: [10.0.0.0/8]}}, {allow: {}}]}\n"
        ),
        "forward", env(cache=True),
    )
    assert names(full.request) == [
        "admit_body_size", "admit_client", "serve_pac", "admit_no_via_loop", "parse_target",
        "admit_connect_port", "admit_rules", "route_forward", "cache_lookup",
    ]
    assert names(full.resolved) == ["admit_not_self", "admit_address"]
    # the cache phase needs an open cache, not only its settings
    closed = compile_phases(plan_of("cache: {store: memory}\n"), "forward", env())
    assert "cache_lookup" not in names(closed.request)


def test_reverse_list() -> None:
    plan = plan_of(CACHED_REVERSE)
    p = compile_phases(plan, "reverse", env(cache=True))
    assert names(p.request) == ["route_reverse_phase", "cache_lookup"]
    assert p.resolved == ()  # an upstream group's servers are the config's own
    trusted = plan_of(CACHED_REVERSE + "reverse: {trusted_proxies: [127.0.0.1]}\n")
    listed = names(compile_phases(trusted, "reverse", env()).request)
    assert listed == ["read_trusted_chain", "route_reverse_phase"]


# -- forward decisions --------------------------------------------------------------------------


def refusal(d: Decision) -> type[Exception]:
    assert isinstance(d, Respond) and d.error is not None, d
    return type(d.error)


def test_forward_proxy_decision_and_refusals() -> None:
    plan = plan_of("limits: {max_body_size: 10}\nforward: {rules: [{deny: {domains: [bad.test]}}]}\n")
    p = compile_phases(plan, "forward", env())
    ctx = ctx_for(plan, head(b"http://origin.test/a?b"))
    d = run(p.request, ctx)
    assert isinstance(d, Proxy) and d is ctx.proxy
    assert (d.target, d.host, d.next_hop) == (b"/a?b", b"origin.test", ("http", "origin.test", 80))
    assert ctx.target is not None and ctx.target.host == "origin.test"
    assert refusal(run(p.request, ctx_for(plan, head(b"http://bad.test/")))) is Forbidden
    assert refusal(run(p.request, ctx_for(plan, head(b"/relative")))) is ClientProtocolError
    assert refusal(run(p.request, ctx_for(plan, head(b"http://o.test/", length=11)))) is BodyTooLarge
    assert refusal(run(p.request, ctx_for(plan, head(b"http://o.test/"), peer="192.0.2.1"))) is Forbidden
    looped = head(b"http://o.test/", via=b"1.1 other, " + (plan.forward.via or b""))
    assert refusal(run(p.request, ctx_for(plan, looped))) is LoopDetected


def test_connect_decision_and_safe_ports() -> None:
    plan = plan_of("")
    p = compile_phases(plan, "forward", env())
    d = run(p.request, ctx_for(plan, head(b"example.test:443", method="CONNECT", host=None)))
    assert isinstance(d, Connect) and d.target.port == 443
    denied = run(p.request, ctx_for(plan, head(b"example.test:25", method="CONNECT", host=None)))
    assert refusal(denied) is Forbidden


def test_client_acl_is_worked_out_once_per_connection_and_plan() -> None:
    plan = plan_of("")
    p = compile_phases(plan, "forward", env())
    client = Client(plan.listeners[0], "127.0.0.1", 1)
    run(p.request, RequestContext(client, head(b"http://o.test/"), plan))
    assert list(client.memo.values()) == [True]
    client.memo[p.request[0]] = False  # the memo answers the second request
    assert refusal(run(p.request, RequestContext(client, head(b"http://o.test/"), plan))) is Forbidden
    fresh = compile_phases(plan, "forward", env())  # a new Plan's phases ask again
    assert isinstance(run(fresh.request, RequestContext(client, head(b"http://o.test/"), plan)), Proxy)


def test_post_resolve_phases_filter_addresses_and_refuse_loops() -> None:
    plan = plan_of("forward: {rules: [{deny: {networks: [10.0.0.0/8]}}, {allow: {}}]}\n")
    p = compile_phases(plan, "forward", env(is_self=lambda ip, port: ip == "127.0.0.9"))
    ctx = ctx_for(plan, head(b"http://name.test/"))
    assert isinstance(run(p.request, ctx), Proxy) and ctx.address_check is not None
    addrs: list[Addr] = [(2, ("10.1.2.3", 80)), (2, ("192.0.2.7", 80))]
    assert run_resolved(p.resolved, ctx, "name.test", 80, addrs) == [(2, ("192.0.2.7", 80))]
    assert refusal(run_resolved(p.resolved, ctx, "name.test", 80, addrs[:1])) is Forbidden  # type: ignore[arg-type]
    out = run_resolved(p.resolved, ctx, "name.test", 80, [(2, ("127.0.0.9", 80))])
    assert refusal(out) is LoopDetected  # type: ignore[arg-type]


# -- reverse decisions ---------------------------------------------------------------------------


def test_reverse_route_proxy_redirect_and_404() -> None:
    plan = plan_of(CACHED_REVERSE)
    p = compile_phases(plan, "reverse", env(cache=True))
    ctx = ctx_for(plan, head(b"/page"))
    assert run(p.request, ctx) == CacheLookup("http")
    assert ctx.proxy is not None and ctx.proxy.group == "o"
    moved = run(p.request, ctx_for(plan, head(b"/moved/x")))
    assert isinstance(moved, Respond) and moved.error is None and moved.status == 301
    assert b"Location: https://origin.test/moved/x\r\n" in moved.data
    assert refusal(run(p.request, ctx_for(plan, head(b"http://abs.test/")))) is ClientProtocolError
    plan404 = plan_of(CACHED_REVERSE.replace("  - {upstream: o, cache: {enabled: true}}\n", ""))
    p404 = compile_phases(plan404, "reverse", env())
    assert refusal(run(p404.request, ctx_for(plan404, head(b"/nothing")))) is RouteNotFound


# -- adding a phase: a module and one row -------------------------------------------------------


class QuotaPhase:
    """What an auth or rate-limit phase looks like: built once per Plan from its settings,
    deciding on the context alone."""

    def __init__(self, blocked: str) -> None:
        self.blocked = blocked
        self.seen: list[str] = []

    def __call__(self, ctx: RequestContext) -> Decision:
        self.seen.append(ctx.client_ip)
        if ctx.client_ip == self.blocked:
            return Respond.refuse(Forbidden("over quota"))
        ctx.identity = type(ctx.identity)(user="alice")
        return CONTINUE


def test_a_new_phase_is_one_row(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[QuotaPhase] = []

    def row(plan: Plan, e: Env) -> QuotaPhase:
        made.append(QuotaPhase("127.0.0.2"))
        return made[-1]

    monkeypatch.setattr(table, "FORWARD", [*table.FORWARD[:2], row, *table.FORWARD[2:]])
    plan = plan_of("forward: {clients: [127.0.0.0/8]}\n")
    p = compile_phases(plan, "forward", env())
    assert names(p.request)[:2] == ["admit_client", "QuotaPhase"]
    ok = ctx_for(plan, head(b"http://o.test/"))
    assert isinstance(run(p.request, ok), Proxy) and ok.identity.user == "alice"
    assert refusal(run(p.request, ctx_for(plan, head(b"http://o.test/"), peer="127.0.0.2"))) is Forbidden
    assert made[0].seen == ["127.0.0.1", "127.0.0.2"] and len(made) == 1  # built once per Plan


def test_log_phase_gets_the_error() -> None:
    lines: list[tuple[str, int, str]] = []

    class Sink:
        enabled = True

        def log(self, client: str, user: str, *rest: object) -> None:
            lines.append((client, rest[3], rest[-1]))  # type: ignore[arg-type]

    plan = plan_of("")
    p = compile_phases(plan, "forward", Env(False, lambda ip, port: False, lambda: Sink()))  # type: ignore[arg-type,return-value]

    class Out:
        status, bytes_in, bytes_out, t0, t_first, cache_result = 403, 0, 10, 0.0, None, ""
        error = "denied"

        class up:  # noqa: N801 (the attempt, as `Outcome.up`)
            t_connect = None
            label = ""

    out: Outcome = Out()
    for phase in p.log:
        phase(ctx_for(plan, head(b"http://o.test/")), out)
    assert lines == [("127.0.0.1", 403, "denied")]


def test_the_pac_file_is_answered_before_the_target_phase() -> None:
    plan = plan_of("forward: {direct: [.corp.example]}\n")
    p = compile_phases(plan, "forward", env())
    for target in (b"/proxy.pac", b"/wpad.dat", b"/proxy.pac?v=2"):
        d = run(p.request, ctx_for(plan, head(target)))
        assert isinstance(d, Respond) and d.error is None and d.status == 200, target
        assert b"application/x-ns-proxy-autoconfig" in d.data and b".corp.example" in d.data
    head_only = run(p.request, ctx_for(plan, head(b"/proxy.pac", method="HEAD")))
    assert isinstance(head_only, Respond) and b"FindProxyForURL" not in head_only.data
    assert refusal(run(p.request, ctx_for(plan, head(b"/proxy.pac", method="POST")))) is ClientProtocolError
    assert refusal(run(p.request, ctx_for(plan, head(b"/index.html")))) is ClientProtocolError
    assert refusal(run(p.request, ctx_for(plan, head(b"/proxy.pac"), peer="192.0.2.1"))) is Forbidden
