"""The PAC file: generated text run in a JavaScript engine (duktape, via dukpy) with the
standard PAC helper functions, for each kind of host."""

from __future__ import annotations

import dukpy
import pytest

from ferryman.pipeline.pac import pac_script, proxy_directive, with_proxy

# The PAC helpers as browsers define them (Mozilla's pac_utils.js), plus a dnsResolve
# stub and, optionally, isInNetEx for IPv6.
PRELUDE = r"""
function dnsDomainIs(host, domain) {
  return host.length >= domain.length && host.substring(host.length - domain.length) == domain;
}
function convert_addr(ipchars) {
  var bytes = ipchars.split('.');
  return ((bytes[0] & 0xff) << 24) | ((bytes[1] & 0xff) << 16) | ((bytes[2] & 0xff) << 8) | (bytes[3] & 0xff);
}
function isInNet(ipaddr, pattern, maskstr) {
  if (!/^\d+\.\d+\.\d+\.\d+$/.test(ipaddr)) return false;
  var host = convert_addr(ipaddr), pat = convert_addr(pattern), mask = convert_addr(maskstr);
  return (host & mask) == (pat & mask);
}
var RESOLVED = dukpy.resolved;
function dnsResolve(host) { return RESOLVED[host] || null; }
"""

# isInNetEx for the few IPv6 prefixes the tests use (a browser implements it in C++).
IS_IN_NET_EX = r"""
function isInNetEx(ip, prefix) {
  var known = {"::1/128": ["::1"], "fd00::/8": ["fd00::5", "fd12::1"]};
  var list = known[prefix] || [];
  for (var i = 0; i < list.length; i++) if (list[i] == ip) return true;
  return false;
}
"""


def find_proxy(pac: str, host: str, with_v6: bool = True, resolved: dict[str, str] | None = None) -> str:
    code = PRELUDE + (IS_IN_NET_EX if with_v6 else "") + pac + "\nFindProxyForURL(dukpy.url, dukpy.host);"
    result: str = dukpy.evaljs(code, url=f"http://{host}/", host=host, resolved=resolved or {})
    return result


PAC = pac_script(
    "proxy.corp.example", 3128,
    direct_networks=["10.0.0.0/8", "192.168.1.0/24", "fd00::/8"],
    direct_domains=["intranet.example", ".corp.example", "*.lab.example"],
)
PROXY = "PROXY proxy.corp.example:3128"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", "DIRECT"),
        ("LOCALHOST.", "DIRECT"),
        ("127.0.0.1", "DIRECT"),
        ("127.8.9.10", "DIRECT"),
        ("::1", "DIRECT"),
        ("[::1]", "DIRECT"),
        ("10.1.2.3", "DIRECT"),
        ("192.168.1.77", "DIRECT"),
        ("192.168.2.77", PROXY),
        ("fd00::5", "DIRECT"),
        ("2001:db8::1", PROXY),
        ("intranet.example", "DIRECT"),
        ("www.intranet.example", PROXY),
        ("corp.example", "DIRECT"),
        ("a.b.corp.example", "DIRECT"),
        ("notcorp.example", PROXY),
        ("x.lab.example", "DIRECT"),
        ("lab.example", PROXY),
        ("www.example.com", PROXY),
        ("8.8.8.8", PROXY),
    ],
)
def test_find_proxy_for_each_kind_of_host(host: str, expected: str) -> None:
    assert find_proxy(PAC, host) == expected


def test_without_is_in_net_ex_ipv6_goes_through_the_proxy_but_loopback_stays_direct() -> None:
    assert find_proxy(PAC, "fd00::5", with_v6=False) == PROXY
    assert find_proxy(PAC, "::1", with_v6=False) == "DIRECT"


def test_names_are_not_resolved_unless_asked() -> None:
    resolved = {"wiki": "10.9.9.9", "www.example.com": "93.184.216.34"}
    assert find_proxy(PAC, "wiki", resolved=resolved) == PROXY
    assert "dnsResolve" not in PAC
    pac = pac_script("127.0.0.1", 3128, ["10.0.0.0/8"], resolve_names=True)
    assert find_proxy(pac, "wiki", resolved=resolved) == "DIRECT"
    assert find_proxy(pac, "www.example.com", resolved=resolved) == "PROXY 127.0.0.1:3128"
    assert find_proxy(pac, "unresolvable", resolved=resolved) == "PROXY 127.0.0.1:3128"


def test_ipv6_proxy_address_and_defaults() -> None:
    pac = pac_script("::1", 3128)
    assert find_proxy(pac, "example.com") == "PROXY [::1]:3128"
    assert find_proxy(pac, "127.0.0.1") == "DIRECT"
    assert pac == pac_script("::1", 3128)  # deterministic


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((["300.0.0.0/8"], []), "not an IP network"),
        (([], ["bad domain"]), "not a domain entry"),
        (([], ['x.example"; alert(1); "']), "not a domain entry"),
        (([], [""]), "not a domain entry"),
    ],
)
def test_bad_settings_are_refused(args: tuple[list[str], list[str]], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        pac_script("proxy", 3128, *args)


def test_proxy_directive_checks_host_and_port() -> None:
    assert proxy_directive("10.0.0.1", 8080) == "PROXY 10.0.0.1:8080"
    assert proxy_directive("2001:db8::1", 3128) == "PROXY [2001:db8::1]:3128"
    for host, port in (('a"b', 80), ("a b", 80), ("", 80), ("ok", 0), ("ok", 70000)):
        with pytest.raises(ValueError):
            proxy_directive(host, port)


def test_with_proxy_names_another_proxy_everywhere_the_script_does() -> None:
    # A direct domain that spells the same text as the proxy line must not be touched.
    pac = pac_script("127.0.0.1", 3128, [], ["proxy.example"], resolve_names=True)
    other = with_proxy(pac, proxy_directive("10.1.2.3", 8080))
    resolved = {"www.example.com": "93.184.216.34"}
    assert find_proxy(other, "www.example.com", resolved=resolved) == "PROXY 10.1.2.3:8080"
    assert find_proxy(other, "unresolvable", resolved=resolved) == "PROXY 10.1.2.3:8080"
    assert find_proxy(other, "proxy.example") == "DIRECT"
    assert "127.0.0.1:3128" not in other
    assert other.replace("10.1.2.3:8080", "127.0.0.1:3128") == pac
