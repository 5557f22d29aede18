"""The SSRF guard phase (pipeline/admit/guard.py) and its post-resolve half, without sockets."""

from __future__ import annotations

from ferryman.config.compile import compile_config
from ferryman.config.load import load_text, normalise
from ferryman.conn.phases import compile_phases
from ferryman.errors import Forbidden, LoopDetected
from ferryman.pipeline.plan import Plan
from ferryman.pipeline.stage import Proxy, Respond, run, run_resolved
from ferryman.upstream.dial import Addr
from tests.unit.test_pipeline_phases import ctx_for, env, head, names

OFFICE = "forward: {clients: [127.0.0.0/8, 10.0.0.0/8]%s}\n"


def plan_of(text: str) -> Plan:
    return compile_config(normalise(load_text(text, "<test>")), "<test>")


def refused(d: object) -> type[Exception]:
    assert isinstance(d, Respond) and d.error is not None, d
    return type(d.error)


def test_not_in_the_list_in_laptop_mode() -> None:
    p = compile_phases(plan_of(""), "forward", env())
    assert "admit_destination_address" not in names(p.request)
    assert names(p.resolved) == ["admit_not_self"]
    office = compile_phases(plan_of(OFFICE % ""), "forward", env())
    assert "admit_destination_address" in names(office.request)
    assert names(office.resolved) == ["admit_not_self", "admit_address"]


def test_literals_are_judged_before_dns() -> None:
    plan = plan_of(OFFICE % "")
    p = compile_phases(plan, "forward", env())
    for target in (b"http://127.0.0.1/", b"http://10.1.1.1/", b"http://169.254.169.254/latest/meta-data/",
                   b"http://[fe80::1]/", b"http://0.0.0.0/", b"http://[::ffff:192.168.0.1]/"):
        assert refused(run(p.request, ctx_for(plan, head(target)))) is Forbidden, target
    assert isinstance(run(p.request, ctx_for(plan, head(b"http://192.0.2.1/"))), Proxy)
    connect = head(b"10.0.0.1:443", method="CONNECT", host=None)
    assert refused(run(p.request, ctx_for(plan, connect))) is Forbidden


def test_a_name_is_judged_on_each_resolved_address() -> None:
    plan = plan_of(OFFICE % "")
    p = compile_phases(plan, "forward", env(is_self=lambda ip, port: port == 3128))
    ctx = ctx_for(plan, head(b"http://rebind.test/"))
    assert isinstance(run(p.request, ctx), Proxy) and ctx.address_check is not None
    lo: Addr = (2, ("127.0.0.1", 80))
    pub: Addr = (2, ("192.0.2.7", 80))
    assert run_resolved(p.resolved, ctx, "rebind.test", 80, [lo, pub]) == [pub]
    out = run_resolved(p.resolved, ctx, "rebind.test", 80, [lo])
    assert isinstance(out, Respond) and out.error is not None
    assert type(out.error) is Forbidden and "loopback" in out.error.detail
    assert refused(run_resolved(p.resolved, ctx, "rebind.test", 3128, [lo])) is LoopDetected


def test_an_allow_by_network_opens_a_private_network_and_an_allow_by_name_does_not() -> None:
    rules = ", rules: [{allow: {networks: [10.0.0.0/8]}}, {allow: {domains: [intranet.test]}}]"
    plan = plan_of(OFFICE % rules)
    p = compile_phases(plan, "forward", env())
    assert isinstance(run(p.request, ctx_for(plan, head(b"http://10.2.3.4/"))), Proxy)
    for host in (b"wiki.test", b"intranet.test"):
        ctx = ctx_for(plan, head(b"http://%s/" % host))
        assert isinstance(run(p.request, ctx), Proxy)
        ten: Addr = (2, ("10.9.9.9", 80))
        lo: Addr = (2, ("127.0.0.1", 80))
        assert run_resolved(p.resolved, ctx, host.decode(), 80, [ten]) == [ten]  # the rule's network
        assert refused(run_resolved(p.resolved, ctx, host.decode(), 80, [lo])) is Forbidden


def test_behind_a_parent_only_literals_are_judged() -> None:
    plan = plan_of(OFFICE % ", parent: 'http://10.0.0.9:3128'")
    p = compile_phases(plan, "forward", env())
    ctx = ctx_for(plan, head(b"http://name.test/"))
    assert isinstance(run(p.request, ctx), Proxy) and ctx.address_check is None
    assert refused(run(p.request, ctx_for(plan, head(b"http://127.0.0.1/")))) is Forbidden
    parent: Addr = (2, ("10.0.0.9", 3128))  # the parent itself may well be private
    assert run_resolved(p.resolved, ctx, "10.0.0.9", 3128, [parent]) == [parent]
