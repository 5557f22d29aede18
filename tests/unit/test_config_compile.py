"""Config -> immutable Plan: ACL sets, listeners, parent, Via, domains files."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from pathlib import Path

import pytest

from ferryman.config.compile import build_plan, compile_config
from ferryman.config.load import load_text, normalise
from ferryman.config.schema import Config
from ferryman.errors import ConfigError
from ferryman.observe.access_log import AccessLogPlan
from ferryman.pipeline.admit.access import before_dns
from ferryman.pipeline.admit.rules import AclRequest
from ferryman.pipeline.plan import DnsPlan, LimitsPlan, Plan, PoolPlan, TimeoutsPlan


@dataclasses.dataclass(frozen=True)
class Verdict:
    allowed: bool
    rule: str


@dataclasses.dataclass(frozen=True)
class NeedsAddress:
    start: int


DEFAULT_ALLOW = Verdict(True, "default")


class AclView:
    """The Plan's forward rules, asked as the rules phase asks them (before DNS, or with
    the address the name resolved to)."""

    def __init__(self, plan: Plan) -> None:
        self.rules = plan.forward.control.rules

    def check(
        self, method: str, host: str, port: int, addr: object = None
    ) -> Verdict | NeedsAddress:
        address = None if addr is None else str(addr)
        req = AclRequest("127.0.0.1", method, host, port, "/", address=address)
        d = self.rules.evaluate(req, 0.0)
        if d.action == "resolve":
            d = before_dns(self.rules, req, 0.0, d, parent=False)
            if d.action == "resolve":
                return NeedsAddress(d.index)
        return Verdict(d.action == "allow", d.rule)


def acl_of(plan: Plan) -> AclView:
    return AclView(plan)


def plan_of(text: str, source: str = "<test>") -> Plan:
    return compile_config(normalise(load_text(text, source)), source)


def write_config(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ferryman.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# -- the built-in default ---------------------------------------------------------------------


def test_default_plan() -> None:
    plan = build_plan(None)
    assert plan.source == "<built-in>"
    (lst,) = plan.listeners
    assert (lst.name, lst.host, lst.port, lst.mode, lst.backlog) == (
        "listeners[0]", "127.0.0.1", 3128, "forward", 1024,
    )
    fwd = plan.forward
    assert fwd.connect_ports == frozenset({443})
    assert fwd.parent is None
    assert fwd.control.rules.rules == ()
    assert acl_of(plan).check("GET", "example.com", 80) == DEFAULT_ALLOW
    assert plan.timeouts == TimeoutsPlan(
        client_header=10.0, tls_handshake=10.0, client_idle=60.0, client_body=60.0, upstream_connect=5.0,
        upstream_header=60.0, upstream_idle=60.0, tunnel_idle=300.0, shutdown_grace=10.0,
    )
    assert plan.limits == LimitsPlan(
        max_header_size=32768, max_url_length=8192, max_headers=100, max_body_size=0
    )
    assert plan.dns == DnsPlan(ttl=30.0, negative_ttl=5.0)
    assert plan.access_log == AccessLogPlan(enabled=True, path="-", format="combined")
    assert isinstance(plan.pool, PoolPlan)


def test_built_in_default_equals_compiled_empty_file() -> None:
    assert build_plan(None) == plan_of("", "<built-in>")


def test_units_reach_the_plan_as_seconds_and_bytes() -> None:
    plan = plan_of(
        "timeouts: {client_header: 500ms, tunnel_idle: 2m}\n"
        "limits: {max_header_size: 16KiB, max_body_size: 10MB}\n"
        "pool: {idle_timeout: 1h}\n"
    )
    assert plan.timeouts.client_header == 0.5
    assert plan.timeouts.tunnel_idle == 120.0
    assert plan.limits.max_header_size == 16384
    assert plan.limits.max_body_size == 10_000_000
    assert plan.pool.idle_timeout == 3600.0


def test_compile_accepts_plain_json_data() -> None:
    # The serving process gets this dict from the validator child as JSON.
    data = json.loads(json.dumps(normalise(Config())))
    assert compile_config(data, "<built-in>") == build_plan(None)


def test_default_clients_are_loopback_only() -> None:
    clients = build_plan(None).forward.clients
    assert clients.allows("127.0.0.1")
    assert clients.allows("127.8.9.10")
    assert clients.allows("::1")
    assert clients.allows("::ffff:127.0.0.1")
    assert not clients.allows("10.0.0.1")
    assert not clients.allows("192.168.1.1")
    assert not clients.allows("2001:db8::1")


def test_default_via_token_names_host_port_and_product() -> None:
    via = build_plan(None).forward.via
    assert via is not None
    assert via.startswith(b"1.1 ")
    assert via.endswith(b":3128 (ferryman)")
    assert len(via.split(b" ")) == 3


def test_via_off() -> None:
    assert plan_of("forward: {via: false}\n").forward.via is None


def test_via_uses_first_listener_port() -> None:
    plan = plan_of("listeners:\n  - {listen: '127.0.0.1:8888'}\n  - {listen: ':9999'}\n")
    assert plan.forward.via is not None
    assert b":8888 (ferryman)" in plan.forward.via


def test_plan_is_immutable() -> None:
    plan = build_plan(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.source = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.forward.via = None  # type: ignore[misc]


# -- listeners and parent ----------------------------------------------------------------------


def test_listeners_are_split_and_named() -> None:
    plan = plan_of(
        "listeners:\n  - {name: office, listen: ':3128', backlog: 64}\n"
        "  - {listen: '[::1]:3129'}\n"
    )
    a, b = plan.listeners
    assert (a.name, a.host, a.port, a.backlog) == ("office", "0.0.0.0", 3128, 64)
    assert (b.name, b.host, b.port) == ("listeners[1]", "::1", 3129)


@pytest.mark.parametrize(
    ("parent", "expected"),
    [
        ("http://10.0.0.1:8080", ("10.0.0.1", 8080)),
        ("http://10.0.0.1:8080/", ("10.0.0.1", 8080)),
        ("http://proxy.lan", ("proxy.lan", 3128)),
        ("http://[fd00::1]:3130", ("fd00::1", 3130)),
    ],
)
def test_parent_is_parsed(parent: str, expected: tuple[str, int]) -> None:
    assert plan_of(f"forward: {{parent: '{parent}'}}\n").forward.parent == expected


def test_connect_ports_and_clients_compiled() -> None:
    plan = plan_of("forward: {connect_ports: [443, 8443], clients: [10.0.0.0/8]}\n")
    assert plan.forward.connect_ports == frozenset({443, 8443})
    assert plan.forward.clients.allows("10.1.1.1")
    assert not plan.forward.clients.allows("127.0.0.1")


# -- rules --------------------------------------------------------------------------------


def test_rules_keep_order_names_and_actions() -> None:
    plan = plan_of(
        """
forward:
  rules:
    - {name: ads, deny: {domains: [.ads.example]}}
    - {allow: {domains: ["*.example"]}}
    - {deny: {}}
"""
    )
    rules = plan.forward.control.rules.rules
    assert [(r.name, r.action) for r in rules] == [
        ("ads", "deny"), ("forward.rules[1]", "allow"), ("forward.rules[2]", "deny"),
    ]
    acl = acl_of(plan)
    assert acl.check("GET", "x.ads.example", 80) == Verdict(False, "ads")
    assert acl.check("GET", "ads.example", 80) == Verdict(False, "ads")
    assert acl.check("GET", "www.example", 80) == Verdict(True, "forward.rules[1]")
    assert acl.check("GET", "example", 80) == Verdict(False, "forward.rules[2]")


def test_rule_methods_are_upper_cased_and_networks_compiled() -> None:
    plan = plan_of(
        """
forward:
  rules:
    - {name: lan, deny: {networks: [192.168.0.0/16, "fd00::/8"]}}
    - {name: ro, deny: {methods: [post, Put]}}
"""
    )
    acl = acl_of(plan)
    ip = ipaddress.ip_address
    assert acl.check("GET", "192.168.4.4", 80, ip("192.168.4.4")) == Verdict(False, "lan")
    assert acl.check("GET", "fd00::5", 80, ip("fd00::5")) == Verdict(False, "lan")
    pub = ip("192.0.2.1")  # what example.com resolved to
    assert acl.check("POST", "example.com", 80, pub) == Verdict(False, "ro")
    assert acl.check("PUT", "example.com", 80, pub) == Verdict(False, "ro")
    assert acl.check("GET", "example.com", 80, pub) == DEFAULT_ALLOW
    # before DNS, a name cannot get past the networks rule: the address decides
    assert acl.check("GET", "example.com", 80) == NeedsAddress(0)


def test_rule_ports_compiled() -> None:
    plan = plan_of("forward:\n  rules:\n    - {name: p, deny: {ports: [25, 465]}}\n")
    assert acl_of(plan).check("CONNECT", "mail.example", 25) == Verdict(False, "p")
    assert acl_of(plan).check("CONNECT", "mail.example", 443) == DEFAULT_ALLOW


# -- domains files --------------------------------------------------------------------------


def test_domains_file_is_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    (conf_dir / "block.txt").write_text(
        "# ads\nads.example\n*.tracker.example\n\n.malware.example\n", encoding="utf-8"
    )
    path = write_config(
        conf_dir, "forward:\n  rules:\n    - {name: bl, deny: {domains_file: block.txt}}\n"
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    acl = acl_of(build_plan(str(path)))
    for host in ["ads.example", "x.tracker.example", "malware.example", "a.malware.example"]:
        assert acl.check("GET", host, 80) == Verdict(False, "bl"), host
    for host in ["tracker.example", "www.ads.example", "ok.example"]:
        assert acl.check("GET", host, 80) == DEFAULT_ALLOW, host


def test_domains_file_absolute_path(tmp_path: Path) -> None:
    lst = tmp_path / "lists" / "allow.txt"
    lst.parent.mkdir()
    lst.write_text("good.example\n", encoding="utf-8")
    path = write_config(
        tmp_path / "conf",
        f"forward:\n  rules:\n    - {{allow: {{domains_file: '{lst}'}}}}\n    - {{deny: {{}}}}\n",
    )
    acl = acl_of(build_plan(str(path)))
    assert acl.check("GET", "good.example", 80).allowed
    assert not acl.check("GET", "bad.example", 80).allowed


def test_inline_domains_and_file_are_merged(tmp_path: Path) -> None:
    (tmp_path / "more.txt").write_text("b.example\n", encoding="utf-8")
    path = write_config(
        tmp_path,
        "forward:\n  rules:\n    - deny: {domains: [a.example], domains_file: more.txt}\n",
    )
    acl = acl_of(build_plan(str(path)))
    assert not acl.check("GET", "a.example", 80).allowed
    assert not acl.check("GET", "b.example", 80).allowed
    assert acl.check("GET", "c.example", 80).allowed


def test_empty_domains_file_matches_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    path = write_config(
        tmp_path, "forward:\n  rules:\n    - deny: {domains_file: empty.txt}\n"
    )
    assert acl_of(build_plan(str(path))).check("GET", "any.example", 80) == DEFAULT_ALLOW


def test_missing_domains_file_names_the_field(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        "forward:\n  rules:\n    - {allow: {}}\n    - {deny: {domains_file: nope.txt}}\n",
    )
    with pytest.raises(ConfigError) as info:
        build_plan(str(path))
    assert info.value.source == str(path)
    (err,) = info.value.errors
    assert err.startswith("forward.rules[1].deny.domains_file: cannot read ")
    assert os.path.join(str(tmp_path), "nope.txt") in err


def test_every_missing_domains_file_is_reported(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        "forward:\n  rules:\n    - {deny: {domains_file: a.txt}}\n"
        "    - {allow: {domains_file: b.txt}}\n",
    )
    with pytest.raises(ConfigError) as info:
        build_plan(str(path))
    fields = [e.split(":", 1)[0] for e in info.value.errors]
    assert fields == ["forward.rules[0].deny.domains_file", "forward.rules[1].allow.domains_file"]


def test_domains_file_inline_comments(tmp_path: Path) -> None:
    (tmp_path / "ads.txt").write_text(
        "example.com # ads\n*.ads.example\t# tab before\n  .tracker.example   #x#y\nEXACT.example#c\n"
        "   # an indented comment line\n\n",
        encoding="utf-8",
    )
    path = write_config(tmp_path, "forward:\n  rules:\n    - {name: ads, deny: {domains_file: ads.txt}}\n")
    acl = acl_of(build_plan(str(path)))
    for host in ["example.com", "x.ads.example", "tracker.example", "a.tracker.example", "exact.example"]:
        assert acl.check("GET", host, 80) == Verdict(False, "ads"), host
    assert acl.check("GET", "ads.example", 80) == DEFAULT_ALLOW


def test_a_line_that_is_not_a_domain_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "ok.txt").write_text("fine.example\n", encoding="utf-8")
    (tmp_path / "bad.txt").write_text(
        "# list\ngood.example\n0.0.0.0 ads.example\nok.example # fine\nhttp://x.example/\n", encoding="utf-8"
    )
    path = write_config(
        tmp_path,
        "forward:\n  rules:\n    - {deny: {domains_file: ok.txt}}\n    - {deny: {domains_file: bad.txt}}\n",
    )
    with pytest.raises(ConfigError) as info:
        build_plan(str(path))
    (err,) = info.value.errors
    bad = os.path.join(str(tmp_path), "bad.txt")
    assert err.startswith(f"forward.rules[1].deny.domains_file: {bad} line 3: ")
    assert "'0.0.0.0 ads.example'" in err
    assert f"{bad} line 5: " in err and "http://x.example/" in err


def test_many_bad_lines_are_summed_up(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_text("a b\n" * 10, encoding="utf-8")
    path = write_config(tmp_path, "forward:\n  rules:\n    - {deny: {domains_file: bad.txt}}\n")
    with pytest.raises(ConfigError) as info:
        build_plan(str(path))
    (err,) = info.value.errors
    assert "line 1: " in err and "line 3: " in err and "line 4: " not in err
    assert err.endswith("(and 7 more lines)")


def test_a_domains_file_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "bin.txt").write_bytes(b"ok.example\n\xff\xfe\n")
    path = write_config(tmp_path, "forward:\n  rules:\n    - {deny: {domains_file: bin.txt}}\n")
    with pytest.raises(ConfigError) as info:
        build_plan(str(path))
    assert "is not UTF-8 text" in info.value.errors[0]


def test_build_plan_reports_load_errors_with_the_path(tmp_path: Path) -> None:
    path = write_config(tmp_path, "forward: [\n")
    with pytest.raises(ConfigError) as info:
        build_plan(str(path))
    assert info.value.source == str(path)
    assert "invalid YAML" in info.value.errors[0]


def test_build_plan_from_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "listeners:\n  - {listen: '127.0.0.1:18080'}\n")
    plan = build_plan(str(path))
    assert plan.source == str(path)
    assert plan.listeners[0].port == 18080


def test_explicit_empty_domain_list_matches_nothing() -> None:
    plan = plan_of("forward:\n  rules:\n    - {allow: {domains: []}}\n    - {deny: {}}\n")
    assert not acl_of(plan).check("GET", "anything.example", 80).allowed


# -- cache policy settings ----------------------------------------------------------------------


def test_cache_heuristic_max_and_route_store_set_cookie_reach_the_rules() -> None:
    plan = plan_of(
        "cache: {store: memory, heuristic_max: 1h}\n"
        "listeners: [{listen: '127.0.0.1:8080', mode: reverse}]\n"
        "upstreams: {o: {servers: [{url: 'http://127.0.0.1:9'}]}}\n"
        "routes:\n"
        "  - {match: {path_prefix: /a}, upstream: o, cache: {enabled: true, store_set_cookie: true}}\n"
        "  - {upstream: o, cache: {enabled: true, default_ttls: {200: 60s}}}\n"
    )
    assert plan.forward.cache_rules is not None and plan.forward.cache_rules.heuristic_max == 3600
    assert plan.reverse is not None
    rules = [r.action.cache_rules for r in plan.reverse.table.routes]  # type: ignore[union-attr]
    assert [(r.heuristic_max, r.store_set_cookie, dict(r.default_ttls)) for r in rules] == [
        (3600, True, {}), (3600, False, {200: 60.0}),
    ]


def test_cache_heuristic_max_defaults_to_one_day() -> None:
    plan = plan_of("cache: {store: memory}\n")
    assert plan.forward.cache_rules is not None and plan.forward.cache_rules.heuristic_max == 86400


REVERSE_ROUTE = (
    "listeners: [{listen: '127.0.0.1:8080', mode: reverse}, {listen: '127.0.0.1:3128'}]\n"
    "upstreams: {o: {servers: [{url: 'http://127.0.0.1:9'}]}}\n"
    "routes: [{upstream: o, cache: {enabled: true}}]\n"
)


def _rules(plan: Plan) -> tuple[object, object]:
    assert plan.reverse is not None
    return plan.forward.cache_rules, plan.reverse.table.routes[0].action.cache_rules  # type: ignore[union-attr]


def test_targeted_cache_control_on_reverse_routes_only_by_default() -> None:
    fwd, rev = _rules(plan_of("cache: {store: memory}\n" + REVERSE_ROUTE))
    assert rev.targets == (b"ferryman-cache-control", b"cdn-cache-control")  # type: ignore[attr-defined]
    assert rev.hidden == {b"ferryman-cache-control"}  # type: ignore[attr-defined]
    assert fwd.targets == () and fwd.hidden == frozenset()  # type: ignore[attr-defined]


def test_targeted_cache_control_settings() -> None:
    fwd, rev = _rules(plan_of(
        "cache: {store: memory, targeted: {own_field: X-Edge-Control, forward: true,"
        " pass_cdn_cache_control: false}}\n" + REVERSE_ROUTE
    ))
    for rules in (fwd, rev):
        assert rules.targets == (b"x-edge-control", b"cdn-cache-control")  # type: ignore[attr-defined]
        assert rules.hidden == {b"x-edge-control", b"cdn-cache-control"}  # type: ignore[attr-defined]
    _, rev = _rules(plan_of(
        "cache: {store: memory, targeted: {own_field: null, cdn_cache_control: false}}\n" + REVERSE_ROUTE
    ))
    assert rev.targets == () and rev.hidden == frozenset()  # type: ignore[attr-defined]


@pytest.mark.parametrize("bad", ["Cache-Control", "cdn-cache-control", "has space", "x:y", ""])
def test_own_targeted_field_must_be_a_field_name_of_its_own(bad: str) -> None:
    with pytest.raises(ConfigError, match="cache.targeted.own_field"):
        plan_of(f"cache: {{store: memory, targeted: {{own_field: {bad!r}}}}}\n")


def test_cache_size_defaults_depend_on_the_store() -> None:
    # A disk cache holds real update files (issue 9.2); the memory store stays small.
    disk = plan_of("cache: {store: disk, path: /var/cache/ferryman}\n").cache
    assert disk is not None and disk.max_object_size == 4 << 30 and disk.max_size == 10 << 30
    memory = plan_of("cache: {store: memory}\n").cache
    assert memory is not None and memory.max_object_size == 64 << 20 and memory.max_size == 256 << 20
    chosen = plan_of("cache: {store: disk, path: /c, max_object_size: 1MiB, max_size: 2GiB}\n").cache
    assert chosen is not None and chosen.max_object_size == 1 << 20 and chosen.max_size == 2 << 30


def test_older_rules_with_empty_lists_keep_their_meaning() -> None:
    # before the ACL language, "ports: []" meant any port (and so for methods and networks)
    plan = plan_of(
        "forward:\n  rules:\n"
        "    - {name: old, deny: {domains: [a.example], ports: [], methods: [], networks: []}}\n"
    )
    acl = acl_of(plan)
    assert acl.check("POST", "a.example", 8080) == Verdict(False, "old")
    assert acl.check("GET", "b.example", 80) == DEFAULT_ALLOW
