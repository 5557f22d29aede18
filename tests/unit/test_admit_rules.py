"""The ACL language: every condition, each action, compile errors with field paths,
the resolve step, and the shadowing check."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ferryman.pipeline.admit.domainset import DomainSet
from ferryman.pipeline.admit.rules import AclDecision, AclRequest, RuleError, RuleSet, compile_rules

# Tuesday 1 December 2026, 10:30 UTC (11:30 in Paris, 05:30 in New York)
TUE_1030 = datetime(2026, 12, 1, 10, 30, tzinfo=UTC).timestamp()


def rs(*rules: dict[str, Any], default: str = "allow", base_dir: str = ".") -> RuleSet:
    return compile_rules(list(rules), base_dir=base_dir, default=default)  # type: ignore[arg-type]


def req(**kw: Any) -> AclRequest:
    base: dict[str, Any] = {"client": "10.1.2.3", "method": "GET", "host": "www.example.com", "port": 80,
                            "path": "/index.html"}
    base.update(kw)
    return AclRequest(**base)


def action(ruleset: RuleSet, now: float = TUE_1030, **kw: Any) -> str:
    return ruleset.evaluate(req(**kw), now).action


# -- actions and order ---------------------------------------------------------------


def test_first_match_wins_and_default_applies() -> None:
    r = rs(
        {"name": "no-ads", "deny": {"domains": [".ads.test"]}, "message": "Ads are blocked"},
        {"allow": {"domains": [".ads.test", "www.example.com"]}},
        default="deny",
    )
    d = r.evaluate(req(host="x.ads.test"), TUE_1030)
    assert d == AclDecision("deny", "no-ads", 0, "Ads are blocked")
    assert r.evaluate(req(), TUE_1030) == AclDecision("allow", "forward.rules[1]", 1)
    assert r.evaluate(req(host="other.test"), TUE_1030) == AclDecision("deny", "default", -1)
    assert rs().evaluate(req(), TUE_1030) == AclDecision("allow", "default", -1)


def test_empty_rule_matches_everything() -> None:
    assert action(rs({"deny": {}})) == "deny"
    # None is the same as an absent key, as in the normalised config
    assert action(rs({"deny": {"ports": None}, "allow": None, "name": None})) == "deny"


def test_auth_rule_asks_the_anonymous_and_lets_the_authenticated_through() -> None:
    r = rs(
        {"auth": {"clients": ["10.0.0.0/8"]}},
        {"allow": {"groups": ["staff"]}},
        {"deny": {}},
    )
    assert r.evaluate(req(), TUE_1030) == AclDecision("auth", "forward.rules[0]", 0)
    assert action(r, user="alice", groups=frozenset({"staff"})) == "allow"
    assert action(r, user="bob", groups=frozenset({"guests"})) == "deny"
    assert action(r, client="192.0.2.1") == "deny"  # the auth rule does not apply to it
    assert r.needs_auth and not rs({"deny": {"ports": [25]}}).needs_auth


# -- every condition -----------------------------------------------------------------


def test_clients_condition_v4_v6_and_mapped() -> None:
    r = rs({"deny": {"clients": ["10.0.0.0/8", "2001:db8::/32"]}})
    assert action(r, client="10.200.0.1") == "deny"
    assert action(r, client="::ffff:10.0.0.1") == "deny"
    assert action(r, client="2001:db8::5") == "deny"
    assert action(r, client="192.168.0.1") == "allow"
    assert action(r, client="not-an-ip") == "allow"


def test_users_groups_and_authenticated() -> None:
    r = rs(
        {"deny": {"users": ["mallory"]}},
        {"allow": {"groups": ["staff", "ops"]}},
        {"deny": {"authenticated": False}},
        {"allow": {"authenticated": True, "methods": ["GET"]}},
        default="deny",
    )
    assert action(r, user="mallory", groups=frozenset({"staff"})) == "deny"
    assert action(r, user="alice", groups=frozenset({"ops"})) == "allow"
    assert action(r) == "deny"
    assert action(r, user="carol") == "allow"
    assert action(r, user="carol", method="POST") == "deny"
    # a group listed without a user (not authenticated) never matches
    assert action(rs({"deny": {"groups": ["staff"]}}), groups=frozenset({"staff"})) == "allow"


def test_destination_domain_forms() -> None:
    r = rs(
        {"deny": {"domains": ["exact.test"]}, "name": "exact"},
        {"deny": {"domains": ["*.sub.test"]}, "name": "star"},
        {"deny": {"domains": [".dom.test"]}, "name": "dot"},
        {"deny": {"domain_regex": [r"^ads?\d*\.", r"tracker"]}, "name": "rx"},
    )

    def rule(host: str) -> str:
        return r.evaluate(req(host=host), TUE_1030).rule

    assert rule("exact.test") == "exact" and rule("a.exact.test") == "default"
    assert rule("a.sub.test") == "star" and rule("sub.test") == "default"
    assert rule("dom.test") == "dot" and rule("a.b.dom.test") == "dot"
    assert rule("ads3.example.com") == "rx" and rule("AD.example.com") == "rx"
    assert rule("x.tracker.net") == "rx" and rule("bads.example.com") == "default"


def test_destination_domains_file_read_once(tmp_path: Path) -> None:
    (tmp_path / "block.txt").write_text("# list\n.bad.test\nworse.test # inline\n")
    loads: list[str] = []

    def load(path: str) -> DomainSet:
        loads.append(path)
        return DomainSet.from_file(path)

    r = compile_rules(
        [{"deny": {"domains_file": "block.txt", "ports": [80]}}, {"deny": {"domains_file": ["block.txt"]}}],
        base_dir=str(tmp_path), load_domains=load,
    )
    assert loads == [str(tmp_path / "block.txt")]
    assert action(r, host="x.bad.test") == "deny"
    assert action(r, host="worse.test", port=443).startswith("deny")
    assert r.evaluate(req(host="worse.test", port=443), TUE_1030).index == 1
    assert action(r, host="good.test") == "allow"


def test_destination_network_matches_the_resolved_address() -> None:
    r = rs({"allow": {"networks": ["10.0.0.0/8"]}, "name": "intranet"}, default="deny")
    first = r.evaluate(req(host="wiki.corp"), TUE_1030)
    assert first == AclDecision("resolve", "intranet", 0)
    again = r.evaluate(req(host="wiki.corp", address="10.9.8.7"), TUE_1030, start=first.index)
    assert again == AclDecision("allow", "intranet", 0, None, by_network=True)
    assert action(r, host="wiki.corp", address="192.0.2.1") == "deny"
    # an IP literal needs no resolution; mapped IPv6 is the IPv4 address
    assert r.evaluate(req(host="10.1.1.1"), TUE_1030).by_network
    assert action(r, host="[::ffff:10.1.1.1]") == "allow"


def test_domains_or_networks_are_alternatives_and_name_wins_before_dns() -> None:
    r = rs({"deny": {"domains": ["intranet.test"], "networks": ["10.0.0.0/8"]}})
    d = r.evaluate(req(host="intranet.test"), TUE_1030)
    assert d.action == "deny" and not d.by_network
    assert action(r, host="other.test") == "resolve"
    assert action(r, host="other.test", address="10.0.0.1") == "deny"
    # a rule whose other conditions fail never asks for DNS
    r2 = rs({"deny": {"networks": ["10.0.0.0/8"], "ports": [25]}})
    assert action(r2, host="other.test", port=80) == "allow"


def test_ports_methods_and_ranges() -> None:
    r = rs(
        {"deny": {"ports": [25, "6660-6669"]}},
        {"deny": {"methods": ["delete", "PUT"], "ports": 8080}},
    )
    assert action(r, port=25) == "deny" and action(r, port=6665) == "deny"
    assert action(r, port=6670) == "allow"
    assert action(r, method="DELETE", port=8080) == "deny"
    assert action(r, method="GET", port=8080) == "allow"


def test_path_prefix_and_regex() -> None:
    r = rs({"deny": {"path_prefix": ["/admin/", "/private"], "path_regex": [r"\.exe$"]}})
    assert action(r, path="/admin/users") == "deny"
    assert action(r, path="/private.html") == "deny"
    assert action(r, path="/download/setup.exe") == "deny"
    assert action(r, path="/public/admin/") == "allow"
    assert action(r, method="CONNECT", path=None, port=443) == "allow"


def test_time_window_days_and_zone() -> None:
    office = {"from": "09:00", "to": "18:00", "days": ["mon", "tue", "wed", "thu", "friday"]}
    paris = rs({"deny": {"time": {**office, "tz": "Europe/Paris"}}})
    ny = rs({"deny": {"time": {**office, "tz": "America/New_York"}}})
    assert action(paris) == "deny"  # 11:30 Tuesday in Paris
    assert action(ny) == "allow"  # 05:30 in New York
    sat = datetime(2026, 12, 5, 11, 0, tzinfo=UTC).timestamp()
    assert action(paris, now=sat) == "allow"
    night = rs({"deny": {"time": {"from": "22:00", "to": "06:00", "tz": "UTC"}}})
    assert action(night, now=datetime(2026, 12, 1, 23, 0, tzinfo=UTC).timestamp()) == "deny"
    assert action(night, now=datetime(2026, 12, 1, 5, 59, tzinfo=UTC).timestamp()) == "deny"
    assert action(night, now=datetime(2026, 12, 1, 6, 0, tzinfo=UTC).timestamp()) == "allow"
    till_midnight = rs({"deny": {"time": {"from": "20:00", "tz": "UTC"}}})
    assert action(till_midnight, now=datetime(2026, 12, 1, 23, 59, tzinfo=UTC).timestamp()) == "deny"


def test_header_present_absent_and_matching() -> None:
    r = rs(
        {"deny": {"headers": {"User-Agent": "(?i)curl/"}}, "name": "ua"},
        {"deny": {"headers": {"X-Debug": True}}, "name": "debug"},
        {"deny": {"headers": {"Referer": False}, "methods": ["POST"]}, "name": "no-referer-post"},
    )

    def rule(method: str = "GET", *headers: tuple[bytes, bytes]) -> str:
        return r.evaluate(req(method=method, headers=list(headers)), TUE_1030).rule

    assert rule("GET", (b"user-agent", b"Mozilla/5.0"), (b"User-Agent", b"CURL/8.5")) == "ua"
    assert rule("GET", (b"X-DEBUG", b"")) == "debug"
    assert rule("POST") == "no-referer-post"
    assert rule("POST", (b"Referer", b"https://a.test/")) == "default"
    assert rule("GET", (b"User-Agent", b"Mozilla")) == "default"


# -- compile errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        ({"deny": {"domain_regex": ["(unclosed"]}}, ".deny.domain_regex[0]: invalid regular"),
        ({"deny": {"path_regex": ["a**"]}}, ".deny.path_regex[0]: invalid regular"),
        ({"deny": {"headers": {"User-Agent": "[z-a]"}}}, ".deny.headers.User-Agent: invalid"),
        ({"deny": {"time": {"from": "25:00"}}}, ".deny.time.from: expected a time of day"),
        ({"deny": {"time": {"to": "9h"}}}, ".deny.time.to: expected a time of day"),
        ({"deny": {"time": {"from": "08:00", "to": "08:00"}}}, ".deny.time: 'from' and 'to'"),
        ({"deny": {"time": {"days": ["mon", "funday"]}}}, ".deny.time.days[1]: expected a day"),
        ({"deny": {"time": {"tz": "Mars/Olympus"}}}, ".deny.time.tz: unknown time zone"),
        ({"deny": {"time": {"tz": "../../etc/passwd"}}}, ".deny.time.tz: unknown time zone"),
        ({"deny": {"domains_file": "missing.txt"}}, ".deny.domains_file: /nowhere/missing.txt: cannot read"),
        ({"deny": {"domains": ["ok.test", "not a domain"]}}, ".deny.domains[1]: not a domain entry"),
        ({"deny": {"networks": ["10.0.0.0/33"]}}, ".deny.networks[0]: '10.0.0.0/33' is not an IP network"),
        ({"deny": {"clients": ["x"]}}, ".deny.clients[0]: 'x' is not an IP network"),
        ({"deny": {"ports": [0]}}, ".deny.ports[0]: expected a port"),
        ({"deny": {"ports": ["90-80"]}}, ".deny.ports[0]: expected a port"),
        ({"deny": {"methods": ["GE T"]}}, ".deny.methods: not a method"),
        ({"deny": {"users": []}}, ".deny.users: an empty list never matches"),
        ({"deny": {"path_prefix": ["admin"]}}, ".deny.path_prefix[0]: a path starts with '/'"),
        ({"deny": {"authenticated": "yes"}}, ".deny.authenticated: expected true or false"),
        ({"deny": {"hosts": ["a"]}}, ".deny.hosts: unknown condition"),
        ({"allow": {}, "deny": {}}, ": a rule needs exactly one of"),
        ({"name": "x"}, ": a rule needs exactly one of"),
        ({"allow": {}, "message": "hi"}, ".message: only a deny rule"),
        ({"deny": {}, "colour": "red"}, ".colour: unknown setting"),
        ({"deny": ["a"]}, ".deny: expected a mapping"),
    ],
)
def test_compile_errors_name_the_field_path(rule: dict[str, Any], error: str) -> None:
    with pytest.raises(RuleError) as ei:
        compile_rules([rule], base_dir="/nowhere")
    assert any(e.startswith("forward.rules[0]" + error) for e in ei.value.errors), ei.value.errors


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_text("ok.test\n\nbad entry\n")
    with pytest.raises(RuleError) as ei:
        compile_rules(
            [{"deny": {"domain_regex": ["("]}}, {"allow": {"domains_file": "bad.txt"}},
             {"deny": {"time": {"from": "25:00"}}}],
            base_dir=str(tmp_path),
        )
    assert [e.split(":")[0] for e in ei.value.errors] == [
        "forward.rules[0].deny.domain_regex[0]",
        "forward.rules[1].allow.domains_file",
        "forward.rules[2].deny.time.from",
    ]
    assert f"{tmp_path}/bad.txt:3: not a domain entry: 'bad entry'" in ei.value.errors[1]


# -- shadowing -----------------------------------------------------------------------


def shadowed(*rules: dict[str, Any]) -> list[tuple[int, int]]:
    return [(s.index, s.by) for s in rs(*rules).shadowed()]


def test_unconditional_rule_shadows_everything_after_it() -> None:
    r = rs({"deny": {"ports": [25]}}, {"name": "all", "allow": {}}, {"deny": {"domains": ["x.test"]}})
    [s] = r.shadowed()
    assert (s.index, s.by) == (2, 1)
    assert s.message.startswith("forward.rules[2] (forward.rules[2]) can never match: forward.rules[1] (all)")


def test_shadowing_by_superset_conditions() -> None:
    get25 = {"allow": {"ports": [25], "methods": ["GET"]}}
    assert shadowed({"deny": {"ports": [25, 465]}}, get25) == [(1, 0)]
    assert shadowed({"deny": {"ports": ["1-1024"]}}, {"allow": {"ports": [80, "100-200"]}}) == [(1, 0)]
    assert shadowed({"deny": {"ports": ["1-1024"]}}, {"allow": {"ports": [80, 443]}}) == [(1, 0)]
    assert shadowed({"deny": {"ports": [80, 81]}}, {"allow": {"ports": ["80-81"]}}) == [(1, 0)]
    assert shadowed({"deny": {"ports": [80, 81]}}, {"allow": {"ports": ["80-82"]}}) == []
    ads = {"deny": {"domains": ["x.ads.test", "*.y.ads.test"]}}
    assert shadowed({"deny": {"domains": [".ads.test"]}}, ads) == [(1, 0)]
    ten = ["10.0.0.0/8"]
    assert shadowed({"deny": {"clients": ten}}, {"allow": {"clients": ["10.1.0.0/16"]}}) == [(1, 0)]
    assert shadowed({"deny": {"networks": ten}}, {"allow": {"networks": ["10.2.0.0/16"]}}) == [(1, 0)]
    assert shadowed({"allow": {"users": ["a", "b"]}}, {"deny": {"users": ["a"], "ports": [80]}}) == [(1, 0)]
    assert shadowed({"allow": {"authenticated": True}}, {"deny": {"groups": ["staff"]}}) == [(1, 0)]
    assert shadowed({"deny": {"path_prefix": ["/a"]}}, {"deny": {"path_prefix": ["/ab", "/a/c"]}}) == [(1, 0)]
    assert shadowed({"deny": {"headers": {"X-A": True}}}, {"deny": {"headers": {"X-A": "v"}}}) == [(1, 0)]
    assert shadowed(
        {"deny": {"time": {"from": "08:00", "to": "18:00"}}},
        {"deny": {"time": {"from": "08:00", "to": "18:00", "days": ["mon"]}}},
    ) == [(1, 0)]


def test_no_shadowing_when_the_later_rule_can_still_match() -> None:
    assert shadowed({"deny": {"ports": [25]}}, {"allow": {"ports": [25, 26]}}) == []
    assert shadowed({"deny": {"domains": ["ads.test"]}}, {"deny": {"domains": ["x.ads.test"]}}) == []
    assert shadowed({"deny": {"domains": ["*.ads.test"]}}, {"deny": {"domains": [".ads.test"]}}) == []
    assert shadowed({"deny": {"methods": ["GET"]}}, {"deny": {}}) == []
    assert shadowed({"auth": {}}, {"allow": {"groups": ["staff"]}}) == []  # auth decides nothing for users
    assert shadowed({"deny": {"domain_regex": ["a"]}}, {"deny": {"domain_regex": ["b"]}}) == []
    assert shadowed({"deny": {"headers": {"X-A": "v"}}}, {"deny": {"headers": {"X-A": True}}}) == []
    by_net = {"deny": {"domains": ["a.test"], "networks": ["10.0.0.0/8"]}}
    assert shadowed({"deny": {"domains": ["a.test"]}}, by_net) == []


# -- runs of simple rules looked up at once -------------------------------------------


def reference(r: RuleSet, q: AclRequest, now: float) -> tuple[str, int]:
    """First match, rule by rule: what the run index must agree with."""
    from ferryman.pipeline.admit.conditions import NO_MATCH, Facts

    ev = Facts(
        q.client, q.method, q.host, q.port, q.path, q.headers or [], q.user, q.groups, q.address, now
    )
    for i, rule in enumerate(r.rules):
        if not all(c.test(ev) for c in rule.conditions):
            continue
        if rule.destination is not None and rule.destination.match(ev) == NO_MATCH:
            continue
        if rule.action == "auth" and q.user is not None:
            continue
        return rule.action, i
    return r.default, -1


def test_runs_of_simple_rules_agree_with_rule_by_rule() -> None:
    import random

    rnd = random.Random(5)
    labels = ["a", "b", "ads", "x", "test", "com"]

    def host() -> str:
        return ".".join(rnd.choice(labels) for _ in range(rnd.randint(1, 4)))

    for _ in range(40):
        rules: list[dict[str, Any]] = []
        for _ in range(rnd.randint(1, 25)):
            kind = rnd.random()
            action_ = rnd.choice(["allow", "deny"])
            if kind < 0.4:
                entries = [rnd.choice(["", ".", "*."]) + host() for _ in range(rnd.randint(1, 3))]
                rules.append({action_: {"domains": entries}})
            elif kind < 0.6:
                rules.append({action_: {"ports": rnd.sample([25, 80, 443, 8080], rnd.randint(1, 2))}})
            elif kind < 0.7:
                rules.append({action_: {"methods": [rnd.choice(["GET", "POST", "PUT"])]}})
            elif kind < 0.8:
                rules.append({action_: {"ports": [80], "methods": ["GET"]}})
            elif kind < 0.9:
                rules.append({action_: {"domain_regex": ["^ads?\\."]}})
            else:
                rules.append({"auth": {"domains": [host()]}})
        r = rs(*rules, default=rnd.choice(["allow", "deny"]))
        for _ in range(60):
            q = req(
                host=host(), port=rnd.choice([25, 80, 443, 8080, 9]),
                method=rnd.choice(["GET", "POST", "PUT"]), user=rnd.choice([None, "u"]),
            )
            d = r.evaluate(q, TUE_1030)
            assert (d.action, d.index) == reference(r, q, TUE_1030), (rules, q)


def test_a_run_is_one_step() -> None:
    r = rs(*[{"deny": {"domains": [f".blocked{i}.test"]}} for i in range(10)],
           *[{"deny": {"ports": [25 + i]}} for i in range(8)],
           {"deny": {"clients": ["192.0.2.0/24"]}}, {"allow": {}})
    assert len(r._fast) == 3
    assert r.evaluate(req(host="x.blocked7.test"), TUE_1030).index == 7
    assert r.evaluate(req(port=30), TUE_1030).index == 15
    assert r.evaluate(req(client="192.0.2.9"), TUE_1030).index == 18
    assert r.evaluate(req(), TUE_1030).index == 19
