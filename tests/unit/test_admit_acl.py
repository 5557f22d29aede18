"""Destination and client access control (pure matching, no I/O): one rule's conditions,
ordered rules and what is left for the dialled address (domain forms: test_admit_domainset)."""

from __future__ import annotations

import ipaddress
import random

import pytest

from ferryman.errors import Forbidden
from ferryman.pipeline.admit.access import before_dns
from ferryman.pipeline.admit.acl import ClientAcl
from ferryman.pipeline.admit.address import AddressCheck
from ferryman.pipeline.admit.rules import AclRequest, RuleSet, compile_rules


def net(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


# -- one rule's conditions (through the ACL language, `rules.py`) -----------------------------


def one(**cond: object) -> RuleSet:
    return compile_rules([{"name": "r", "deny": cond}])


def hit(rs: RuleSet, method: str, host: str, port: int, address: str | None = None) -> bool | None:
    """True: the rule matches; False: it does not; None: only the address can tell."""
    d = rs.evaluate(AclRequest("127.0.0.1", method, host.strip("[]"), port, "/", address=address), 0.0)
    return None if d.action == "resolve" else d.action == "deny"


def test_empty_matcher_matches_everything() -> None:
    m = one()
    assert hit(m, "GET", "example.com", 80)
    assert hit(m, "CONNECT", "10.0.0.1", 443)


def test_ports_condition() -> None:
    m = one(ports=[80, 8080])
    assert hit(m, "GET", "a.com", 80)
    assert hit(m, "GET", "a.com", 8080)
    assert hit(m, "GET", "a.com", 443) is False


def test_methods_condition() -> None:
    m = one(methods=["CONNECT"])
    assert hit(m, "CONNECT", "a.com", 443)
    assert hit(m, "GET", "a.com", 443) is False


def test_networks_condition_ipv4_and_ipv6() -> None:
    m = one(networks=["10.0.0.0/8", "fd00::/8"])
    assert hit(m, "GET", "10.1.2.3", 80)
    assert hit(m, "GET", "fd12::1", 80)
    assert hit(m, "GET", "[fd12::1]", 80)
    assert hit(m, "GET", "11.0.0.1", 80) is False
    assert hit(m, "GET", "2001:db8::1", 80) is False


def test_networks_condition_on_a_name_waits_for_its_address() -> None:
    m = one(networks=["10.0.0.0/8"])
    assert hit(m, "GET", "example.com", 80) is None  # not known before DNS
    assert hit(m, "GET", "example.com", 80, "10.9.9.9") is True
    assert hit(m, "GET", "example.com", 80, "192.0.2.1") is False
    # ports and methods that do not hold decide at once, without the address
    assert hit(one(networks=["10.0.0.0/8"], ports=[22]), "GET", "example.com", 80) is False


def test_domains_condition() -> None:
    m = one(domains=[".example.com"])
    assert hit(m, "GET", "www.example.com", 80)
    assert hit(m, "GET", "example.org", 80) is False


def test_domains_or_networks_identify_the_destination() -> None:
    m = one(domains=["intranet.corp"], networks=["192.168.0.0/16"])
    assert hit(m, "GET", "intranet.corp", 80)
    assert hit(m, "GET", "192.168.1.1", 80)
    assert hit(m, "GET", "example.com", 80) is None  # the address will tell
    assert hit(m, "GET", "8.8.8.8", 80) is False


def test_all_given_conditions_must_hold() -> None:
    m = one(domains=["*.example.com"], ports=[443], methods=["CONNECT"])
    assert hit(m, "CONNECT", "www.example.com", 443)
    assert hit(m, "GET", "www.example.com", 443) is False
    assert hit(m, "CONNECT", "www.example.com", 8443) is False
    assert hit(m, "CONNECT", "www.example.org", 443) is False


def test_network_rule_matches_ipv4_mapped_ipv6_destination() -> None:
    m = one(networks=["10.0.0.0/8"])
    assert hit(m, "GET", "::ffff:10.0.0.1", 80)


# -- ordered rules, and what is left for the address (`access.py`, `address.py`) -------------


def verdict(rs: RuleSet, method: str, host: str, port: int) -> tuple[str, str]:
    """The pre-resolve answer of the rules phase: (action, rule), or ("resolve", first rule)."""
    req = AclRequest("127.0.0.1", method, host, port, "/")
    d = rs.evaluate(req, 0.0)
    if d.action == "resolve":
        d = before_dns(rs, req, 0.0, d, parent=False)
    return d.action, d.rule


def rules(*specs: tuple[str, str, dict[str, object]]) -> RuleSet:
    return compile_rules([{"name": n, a: c} for n, a, c in specs])


def address_check(rs: RuleSet, method: str, host: str, port: int, start: int) -> AddressCheck:
    return AddressCheck(host, port, rs, AclRequest("127.0.0.1", method, host, port, "/"), start)


def test_no_rules_allows_by_default() -> None:
    assert verdict(compile_rules([]), "GET", "example.com", 80) == ("allow", "default")


def test_first_matching_rule_wins_deny_first() -> None:
    acl = rules(
        ("block-ads", "deny", {"domains": [".ads.example"]}),
        ("allow-example", "allow", {"domains": [".example"]}),
        ("deny-rest", "deny", {}),
    )
    assert verdict(acl, "GET", "x.ads.example", 80) == ("deny", "block-ads")
    assert verdict(acl, "GET", "www.example", 80) == ("allow", "allow-example")
    assert verdict(acl, "GET", "other.org", 80) == ("deny", "deny-rest")


def test_first_matching_rule_wins_allow_first() -> None:
    acl = rules(
        ("allow-example", "allow", {"domains": [".example"]}),
        ("block-ads", "deny", {"domains": [".ads.example"]}),
    )
    # Same rules, other order: the earlier allow now decides.
    assert verdict(acl, "GET", "x.ads.example", 80) == ("allow", "allow-example")


def test_non_matching_rules_fall_through_to_default_allow() -> None:
    acl = rules(("ssh", "deny", {"ports": [22]}))
    assert verdict(acl, "CONNECT", "h", 22) == ("deny", "ssh")
    assert verdict(acl, "CONNECT", "h", 443) == ("allow", "default")


def test_method_and_network_rules() -> None:
    acl = rules(
        ("no-private", "deny", {"networks": ["10.0.0.0/8", "127.0.0.0/8"]}),
        ("read-only", "deny", {"methods": ["POST", "PUT", "DELETE"]}),
    )
    assert verdict(acl, "GET", "127.0.0.1", 80) == ("deny", "no-private")
    check = address_check(acl, "POST", "example.com", 80, 0)
    err = check.refusal("192.0.2.1")
    assert err is not None and "(rule: read-only)" in err.detail
    assert address_check(acl, "GET", "example.com", 80, 0).allows("192.0.2.1")


def test_a_name_is_checked_from_the_first_rule_that_needs_its_address() -> None:
    acl = rules(
        ("trusted", "allow", {"domains": ["intranet.corp"]}),
        ("no-private", "deny", {"networks": ["10.0.0.0/8"]}),
        ("rest", "allow", {}),
    )
    assert verdict(acl, "GET", "intranet.corp", 80) == ("allow", "trusted")  # decided before DNS
    assert verdict(acl, "GET", "evil.example", 80) == ("resolve", "no-private")
    check = address_check(acl, "GET", "evil.example", 80, 1)
    for ip in ("10.1.1.1", "::ffff:10.1.1.1"):
        err = check.refusal(ip)
        assert isinstance(err, Forbidden) and "(rule: no-private)" in err.detail, ip
    assert check.allows("192.0.2.7")
    # without an address ever (a parent proxy resolves the name), networks cannot match a name
    req = AclRequest("127.0.0.1", "GET", "evil.example", 80, "/")
    d = before_dns(acl, req, 0.0, acl.evaluate(req, 0.0), parent=True)
    assert (d.action, d.rule) == ("allow", "rest")


def test_the_address_is_not_needed_when_it_cannot_change_the_verdict() -> None:
    acl = rules(
        ("no-private", "deny", {"networks": ["10.0.0.0/8"]}),
        ("blocked", "deny", {"domains": ["blocked.example"]}),
        ("also-private", "deny", {"networks": ["192.168.0.0/16"]}),
        ("ok", "allow", {"domains": ["ok.example"]}),
    )
    # denied whatever the address: decided before DNS (no lookup of a blocked name)
    assert verdict(acl, "GET", "blocked.example", 80) == ("deny", "blocked")
    # allowed by name, but an earlier deny might match its address
    assert verdict(acl, "GET", "ok.example", 80) == ("resolve", "no-private")
    # nothing surely matches: the default allow, unless a networks rule matches
    assert verdict(acl, "GET", "other.example", 80) == ("resolve", "no-private")


def test_address_check_dials_only_allowed_addresses() -> None:
    acl = rules(("lo", "deny", {"networks": ["127.0.0.0/8", "::1/128"]}))
    check = address_check(acl, "GET", "localhost", 80, 0)
    v4, v6, pub = (2, ("127.0.0.1", 80)), (10, ("::1", 80, 0, 0)), (2, ("192.0.2.1", 80))
    assert check.admit([v4, pub, v6]) == [pub]
    with pytest.raises(Forbidden, match=r"access to localhost denied \(rule: lo\)"):
        check.admit([v4, v6])


# -- ClientAcl -----------------------------------------------------------------------------


def test_client_acl_ipv4() -> None:
    acl = ClientAcl(net("10.0.0.0/8", "192.168.1.0/24"))
    assert acl.allows("10.200.0.1")
    assert acl.allows("192.168.1.254")
    assert not acl.allows("192.168.2.1")
    assert not acl.allows("8.8.8.8")


def test_client_acl_ipv6() -> None:
    acl = ClientAcl(net("::1/128", "fd00::/8"))
    assert acl.allows("::1")
    assert acl.allows("fd00::abcd")
    assert not acl.allows("2001:db8::1")


def test_client_acl_unmaps_ipv4_mapped_ipv6() -> None:
    acl = ClientAcl(net("127.0.0.0/8", "::1/128"))
    assert acl.allows("::ffff:127.0.0.1")
    assert not acl.allows("::ffff:10.0.0.1")


def test_client_acl_mapped_address_does_not_match_its_ipv6_form_only() -> None:
    # An IPv6-only list does not accidentally admit an IPv4 client via mapping.
    acl = ClientAcl(net("::ffff:0:0/96"))
    assert not acl.allows("::ffff:10.0.0.1")


@pytest.mark.parametrize("ip", ["", "not-an-ip", "10.0.0.256", "[::1]", "1.2.3"])
def test_client_acl_rejects_unparseable_addresses(ip: str) -> None:
    assert not ClientAcl(net("0.0.0.0/0", "::/0")).allows(ip)


def test_client_acl_empty_allows_nobody() -> None:
    assert not ClientAcl(()).allows("127.0.0.1")


def test_client_acl_prefix_boundaries() -> None:
    acl = ClientAcl(net("192.168.1.0/24", "10.1.2.3/32"))
    assert not acl.allows("192.168.0.255")
    assert acl.allows("192.168.1.0")
    assert acl.allows("192.168.1.255")
    assert not acl.allows("192.168.2.0")
    assert acl.allows("10.1.2.3")
    assert not acl.allows("10.1.2.4")


def test_client_acl_agrees_with_ipaddress_reference() -> None:
    networks = net("10.0.0.0/8", "172.16.0.0/12", "192.168.7.0/24", "127.0.0.1/32", "fd00::/8")
    acl = ClientAcl(networks)
    rng = random.Random(1234)
    samples = [
        ".".join(
            str(b)
            for b in (rng.choice([10, 172, 192, 127, 8]), *rng.choices(range(256), k=3))
        )
        for _ in range(2000)
    ] + ["0.0.0.0", "255.255.255.255", "172.15.255.255", "172.31.255.255", "172.32.0.0"]
    for ip in samples:
        addr = ipaddress.ip_address(ip)
        expected = any(addr in n for n in networks)
        assert acl.allows(ip) is expected, ip
        assert acl.allows("::ffff:" + ip) is expected, ip


@pytest.mark.parametrize("ip", ["127.0.0.1 junk", "0x7f.0.0.1"])
def test_client_acl_rejects_non_canonical_ipv4(ip: str) -> None:
    assert not ClientAcl(net("127.0.0.0/8")).allows(ip)


def test_an_auth_rule_waiting_for_the_address_asks_for_credentials_first() -> None:
    acl = rules(("lan-auth", "auth", {"networks": ["10.0.0.0/8"]}), ("rest", "allow", {}))
    assert verdict(acl, "GET", "wiki.example", 80) == ("auth", "lan-auth")
    authed = AclRequest("127.0.0.1", "GET", "wiki.example", 80, "/", user="alice")
    d = acl.evaluate(authed, 0.0)
    assert (d.action, d.rule) == ("resolve", "lan-auth")  # skipped once the address is known
    assert AddressCheck("wiki.example", 80, acl, authed, d.index).allows("10.1.1.1")
