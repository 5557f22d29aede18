"""Reverse-proxy route table: precedence, host and path matching, filters, rewrite."""

from __future__ import annotations

import re

import pytest

from ferryman.pipeline.route.table import (
    Route,
    RouteMatch,
    RouteTable,
    normalize_path,
    request_host,
    rewrite_path,
)

Headers = list[tuple[bytes, bytes]]


def r(name: str, **match: object) -> Route[str]:
    return Route(name, RouteMatch(**match), f"->{name}")  # type: ignore[arg-type]


def find(
    table: RouteTable[str],
    host: bytes | str | None,
    path: bytes = b"/",
    method: str = "GET",
    headers: Headers | None = None,
) -> str | None:
    route = table.lookup(host, method, path, headers or [])
    return None if route is None else route.name


# -- rule 1: host class ----------------------------------------------------------------


def test_exact_host_beats_wildcard_beats_any_host() -> None:
    table = RouteTable(
        [
            r("any"),
            r("wild", hosts=("*.example.com",)),
            r("exact", hosts=("api.example.com",)),
        ]
    )
    assert find(table, "api.example.com") == "exact"
    assert find(table, "www.example.com") == "wild"
    assert find(table, "other.org") == "any"


def test_longer_wildcard_suffix_beats_shorter() -> None:
    table = RouteTable(
        [
            r("short", hosts=("*.example.com",)),
            r("long", hosts=("*.eu.example.com",)),
        ]
    )
    assert find(table, "a.eu.example.com") == "long"
    assert find(table, "x.y.eu.example.com") == "long"
    assert find(table, "a.us.example.com") == "short"
    assert find(table, "eu.example.com") == "short"  # "*.eu..." needs a label in front


def test_host_class_outranks_path_specificity() -> None:
    # A host-less exact path does not beat a host route with no path condition.
    table = RouteTable([r("any-exact", path_exact="/x"), r("host-catchall", hosts=("a.com",))])
    assert find(table, "a.com", b"/x") == "host-catchall"
    assert find(table, "b.com", b"/x") == "any-exact"


def test_falls_through_host_classes_when_nothing_matches() -> None:
    table = RouteTable(
        [
            r("v1", hosts=("api.example.com",), path_prefix="/v1"),
            r("wild", hosts=("*.example.com",), path_prefix="/w"),
            r("catchall"),
        ]
    )
    assert find(table, "api.example.com", b"/v1/users") == "v1"
    assert find(table, "api.example.com", b"/w") == "wild"
    assert find(table, "api.example.com", b"/v2") == "catchall"


def test_route_with_several_hosts_is_indexed_under_each() -> None:
    table = RouteTable([r("multi", hosts=("a.com", "*.b.com", "A.COM"))])
    assert find(table, "a.com") == "multi"
    assert find(table, "x.b.com") == "multi"
    assert list(table.candidates("a.com", b"/")) == [table.routes[0]]  # listed once


# -- host normalization ----------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "api.example.com",
        "API.Example.COM",
        b"api.example.com:8443",
        "api.example.com.",
        b"Api.Example.Com.:80",
        " api.example.com ",
    ],
)
def test_host_case_port_and_trailing_dot_ignored(host: bytes | str) -> None:
    table = RouteTable([r("api", hosts=("api.example.com",)), r("other", hosts=("*.com",))])
    assert find(table, host) == "api"


def test_configured_host_is_normalized_too() -> None:
    table = RouteTable([r("api", hosts=("API.Example.com.",)), r("w", hosts=("*.EXAMPLE.org.",))])
    assert find(table, "api.example.com") == "api"
    assert find(table, "x.example.org") == "w"


def test_wildcard_matches_one_or_more_labels_not_the_domain_itself() -> None:
    table = RouteTable([r("wild", hosts=("*.example.com",))])
    assert find(table, "a.example.com") == "wild"
    assert find(table, "a.b.c.example.com") == "wild"
    assert find(table, "example.com") is None
    assert find(table, "badexample.com") is None
    assert find(table, "example.com.evil.net") is None


def test_ipv6_literal_host_with_port() -> None:
    table = RouteTable([r("v6", hosts=("[::1]",))])
    assert request_host(b"[::1]:8080") == "[::1]"
    assert find(table, b"[::1]:8080") == "v6"
    assert find(table, "[::1]") == "v6"


def test_missing_or_empty_host_reaches_only_hostless_routes() -> None:
    table = RouteTable([r("host", hosts=("a.com",)), r("any")])
    assert find(table, None) == "any"
    assert find(table, b"") == "any"
    assert find(RouteTable([r("host", hosts=("a.com",))]), None) is None


@pytest.mark.parametrize("bad", ["*", "*.", "a.*.com", "*.*.com", "", "a..com", ".a.com", "**.a.com"])
def test_invalid_host_patterns_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        RouteMatch(hosts=(bad,))


# -- rule 2: path condition ------------------------------------------------------------


def paths_table() -> RouteTable[str]:
    return RouteTable(
        [
            r("none"),
            r("regex-a", path_regex=r"/api/v\d+/"),
            r("regex-b", path_regex=r"/api/"),
            r("prefix-api", path_prefix="/api"),
            r("prefix-api-v1", path_prefix="/api/v1"),
            r("exact", path_exact="/api/v1/ping"),
        ]
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (b"/api/v1/ping", "exact"),  # exact beats every prefix and regex
        (b"/api/v1/users", "prefix-api-v1"),  # the longest prefix
        (b"/api/v2/users", "prefix-api"),  # prefixes beat regexes
        (b"/apix", "none"),  # no prefix (segment-aware), no regex
        (b"/other", "none"),
    ],
)
def test_exact_then_longest_prefix_then_regex_then_none(path: bytes, expected: str) -> None:
    assert find(paths_table(), "h", path) == expected


def test_regexes_in_config_order_then_no_path_routes() -> None:
    table = RouteTable(
        [
            r("none"),
            r("regex-a", path_regex=r"/api/v\d+/"),
            r("regex-b", path_regex=r"/api/"),
        ]
    )
    assert find(table, "h", b"/api/v2/x") == "regex-a"
    assert find(table, "h", b"/api/x") == "regex-b"
    assert find(table, "h", b"/x") == "none"
    assert [x.name for x in table.candidates("h", b"/api/v2/x")] == ["regex-a", "regex-b", "none"]


def test_ties_go_to_config_order() -> None:
    table = RouteTable(
        [
            r("first", path_prefix="/a"),
            r("second", path_prefix="/a"),
            r("third", path_prefix="/a", methods=frozenset({"POST"})),
        ]
    )
    assert find(table, "h", b"/a/b") == "first"
    assert [x.name for x in table.candidates("h", b"/a")] == ["first", "second", "third"]


def test_candidates_list_full_precedence_order() -> None:
    names = [x.name for x in paths_table().candidates("h", b"/api/v1/ping?q=1")]
    assert names == ["exact", "prefix-api-v1", "prefix-api", "regex-a", "regex-b", "none"]


@pytest.mark.parametrize(
    ("prefix", "path", "matches"),
    [
        ("/api", b"/api", True),
        ("/api", b"/api/", True),
        ("/api", b"/api/x/y", True),
        ("/api", b"/apix", False),
        ("/api", b"/ap", False),
        ("/api/", b"/api/x", True),
        ("/api/", b"/api/", True),
        ("/api/", b"/api", False),
        ("/", b"/anything/at/all", True),
        ("/a/b", b"/a/b/c", True),
        ("/a/b", b"/a/bc", False),
        ("/api", b"/api?x=1", True),
        ("/api", b"/apix?/api", False),
    ],
)
def test_prefix_is_segment_aware(prefix: str, path: bytes, matches: bool) -> None:
    table = RouteTable([r("p", path_prefix=prefix)])
    assert (find(table, "h", path) == "p") is matches


def test_exact_path_ignores_query_only() -> None:
    table = RouteTable([r("e", path_exact="/ping")])
    assert find(table, "h", b"/ping") == "e"
    assert find(table, "h", b"/ping?full=1") == "e"
    assert find(table, "h", b"/ping/") is None
    assert find(table, "h", b"/pin") is None


def test_regex_uses_match_against_the_path_without_query() -> None:
    table = RouteTable([r("img", path_regex=r"/img/[0-9]+\.png$")])
    assert find(table, "h", b"/img/42.png") == "img"
    assert find(table, "h", b"/img/42.png?size=2") == "img"  # "$" sees no query
    assert find(table, "h", b"/x/img/42.png") is None  # match, not search
    assert find(table, "h", b"/img/42.pngx") is None


def test_regex_compiled_once_at_construction() -> None:
    m = RouteMatch(path_regex=r"/a+")
    assert isinstance(m._regex, re.Pattern)
    with pytest.raises(ValueError, match="invalid path_regex"):
        RouteMatch(path_regex="/(")


def test_one_path_condition_per_route() -> None:
    with pytest.raises(ValueError):
        RouteMatch(path_prefix="/a", path_exact="/a")
    with pytest.raises(ValueError):
        RouteMatch(path_prefix="api")


# -- path normalization ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        (b"/a/b", b"/a/b"),
        (b"/%61dmin", b"/admin"),
        (b"/a%2fb", b"/a%2Fb"),  # reserved: kept encoded, hex upper-cased
        (b"/caf%c3%a9", b"/caf%C3%A9"),
        (b"/a/./b", b"/a/b"),
        (b"/a/b/../c", b"/a/c"),
        (b"/a/b/..", b"/a/"),
        (b"/../../x", b"/x"),
        (b"/public/%2e%2e/admin", b"/admin"),
        (b"/a//b", b"/a//b"),
        (b"/%zz", b"/%zz"),
        (b"*", b"*"),
    ],
)
def test_normalize_path(raw: bytes, normal: bytes) -> None:
    assert normalize_path(raw) == normal


def test_encoded_and_dot_segment_paths_cannot_dodge_a_route() -> None:
    table = RouteTable([r("admin", path_prefix="/admin"), r("catchall")])
    for path in (b"/admin/x", b"/%61dmin/x", b"/public/../admin", b"/public/%2E%2E/admin/x", b"/./admin"):
        assert find(table, "h", path) == "admin", path


# -- method and header filters ---------------------------------------------------------


def test_method_filter_skips_to_next_by_precedence() -> None:
    table = RouteTable(
        [
            r("write", path_prefix="/api", methods=frozenset({"POST", "PUT"})),
            r("read", path_prefix="/", methods=frozenset({"GET", "HEAD"})),
        ]
    )
    assert find(table, "h", b"/api/x", "POST") == "write"
    assert find(table, "h", b"/api/x", "GET") == "read"
    assert find(table, "h", b"/api/x", "DELETE") is None
    assert find(table, "h", b"/api/x", "post") is None  # methods are case-sensitive


def test_method_filter_falls_back_across_host_classes() -> None:
    table = RouteTable([r("host-post", hosts=("a.com",), methods=frozenset({"POST"})), r("any")])
    assert find(table, "a.com", method="POST") == "host-post"
    assert find(table, "a.com", method="GET") == "any"


def test_header_filters() -> None:
    table = RouteTable(
        [
            r("canary", path_prefix="/", headers=(("X-Canary", "1"),)),
            r("debug", path_prefix="/", headers=(("x-debug", None),)),
            r("plain", path_prefix="/"),
        ]
    )
    assert find(table, "h", headers=[(b"X-CANARY", b"1")]) == "canary"
    assert find(table, "h", headers=[(b"x-canary", b" 1 ")]) == "canary"  # OWS trimmed
    assert find(table, "h", headers=[(b"x-canary", b"2")]) == "plain"
    assert find(table, "h", headers=[(b"x-canary", b"2"), (b"X-Canary", b"1")]) == "canary"
    assert find(table, "h", headers=[(b"X-Debug", b"")]) == "debug"  # presence only
    assert find(table, "h", headers=[]) == "plain"


def test_all_header_conditions_must_hold() -> None:
    table = RouteTable([r("both", headers=(("a", "1"), ("b", None))), r("else")])
    assert find(table, "h", headers=[(b"a", b"1"), (b"b", b"x")]) == "both"
    assert find(table, "h", headers=[(b"a", b"1")]) == "else"
    assert find(table, "h", headers=[(b"b", b"x")]) == "else"


# -- no route --------------------------------------------------------------------------


def test_no_route_is_none() -> None:
    table = RouteTable([r("api", hosts=("api.example.com",), path_prefix="/v1")])
    assert find(table, "api.example.com", b"/v2") is None
    assert find(table, "www.example.com", b"/v1") is None
    assert find(RouteTable([]), "a.com") is None


def test_duplicate_route_names_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate route names: x"):
        RouteTable([r("x"), r("x", path_prefix="/a")])


def test_route_match_is_a_value() -> None:
    a = RouteMatch(hosts=("a.com",), path_regex="/x", headers=(("X-A", "1"),))
    b = RouteMatch(hosts=("a.com",), path_regex="/x", headers=(("x-a", "1"),))
    assert a == b and hash(a) == hash(b)
    with pytest.raises(AttributeError):
        a.path_regex = "/y"  # type: ignore[misc]


# -- index -----------------------------------------------------------------------------


def test_thousand_exact_hosts_are_indexed() -> None:
    routes = [r(f"r{i}", hosts=(f"h{i}.example.com",), path_prefix="/") for i in range(1000)]
    routes.append(r("fallback"))
    table = RouteTable(routes)
    for i in range(0, 1000, 7):
        host = f"h{i}.example.com"
        assert find(table, host, b"/x") == f"r{i}"
        # Only this host's route and the host-less fallback are even considered.
        assert [x.name for x in table.candidates(host, b"/x")] == [f"r{i}", "fallback"]
    assert find(table, "h1000.example.com") == "fallback"


# -- rewrite ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "strip", "replace", "matched", "expected"),
    [
        (b"/api/users?id=1", None, None, "/api", b"/api/users?id=1"),  # no rewrite: raw
        (b"/%61pi/users", None, None, None, b"/%61pi/users"),
        (b"/api/users?id=1&x=%2F", "/api", None, None, b"/users?id=1&x=%2F"),
        (b"/api", "/api", None, None, b"/"),
        (b"/api?q", "/api", None, None, b"/?q"),
        (b"/api/", "/api/", None, None, b"/"),
        (b"/api/x", "/api/", None, None, b"/x"),
        (b"/apix/y", "/api", None, None, b"/apix/y"),  # segment-aware: not stripped
        (b"/other", "/api", None, None, b"/other"),
        (b"/%61pi/users?q=1", "/api", None, None, b"/users?q=1"),  # normal form, as matched
        (b"/api/users?id=1", None, "/v2", "/api", b"/v2/users?id=1"),
        (b"/api/users", None, "/v2/", "/api", b"/v2/users"),  # no "//" at the join
        (b"/api/users", None, "/v2/", "/api/", b"/v2/users"),
        (b"/api/users", None, "/v2", "/api/", b"/v2/users"),
        (b"/api", None, "/v2", "/api", b"/v2"),
        (b"/api/users", None, "/", "/api", b"/users"),
        (b"/api/users", None, "", "/api", b"/users"),
        (b"/api/users", "/api", "/internal", "/ignored", b"/internal/users"),
    ],
)
def test_rewrite_path(
    path: bytes, strip: str | None, replace: str | None, matched: str | None, expected: bytes
) -> None:
    assert rewrite_path(path, strip, replace, matched) == expected


def test_rewrite_replace_needs_a_prefix_to_replace() -> None:
    with pytest.raises(ValueError):
        rewrite_path(b"/x", None, "/v2", None)
