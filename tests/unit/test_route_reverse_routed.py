"""What the reverse router tells the cache to key on (`Proxy.routed`): the routed path and
query, in normal form and before a route rewrite; None when that is the forwarded target."""

from __future__ import annotations

from ferryman.config.compile import compile_config
from ferryman.config.load import load_text, normalise
from ferryman.http1.events import Framing, RequestHead
from ferryman.pipeline.plan import Plan
from ferryman.pipeline.route.reverse import route_reverse
from ferryman.pipeline.stage import Proxy

CONFIG = (
    "cache: {store: memory}\n"
    "listeners: [{listen: '127.0.0.1:8080', mode: reverse}]\n"
    "upstreams: {o: {servers: [{url: 'http://127.0.0.1:9'}]}}\n"
    "routes:\n"
    "  - {match: {path_prefix: /v1}, upstream: o, rewrite: {strip_prefix: /v1}, cache: {enabled: true}}\n"
    "  - {match: {path_prefix: /nc}, upstream: o, rewrite: {strip_prefix: /nc}}\n"
    "  - {upstream: o, host_header: backend.internal, cache: {enabled: true}}\n"
)


def _plan() -> Plan:
    return compile_config(normalise(load_text(CONFIG, "<test>")), "<test>")


def _route(plan: Plan, target: bytes) -> Proxy:
    head = RequestHead("GET", target, "1.1", [], Framing.NONE, 0, True, b"site.test", frozenset(), False)
    assert plan.reverse is not None
    d = route_reverse(plan.reverse, head, "127.0.0.1", False)
    assert isinstance(d, Proxy)
    return d


def test_no_rewrite_the_forwarded_target_is_the_key() -> None:
    d = _route(_plan(), b"//a/./b?q=%61")
    assert (d.target, d.routed, d.host) == (b"/a/b?q=%61", None, b"backend.internal")


def test_a_rewrite_keeps_the_routed_path_for_the_cache() -> None:
    d = _route(_plan(), b"/v1//x?y")
    assert (d.target, d.routed) == (b"/x?y", b"/v1/x?y")


def test_an_uncached_route_does_not_pay_for_it() -> None:
    d = _route(_plan(), b"/nc/x")
    assert (d.target, d.routed) == (b"/x", None)
