"""The reverse proxy's path normal form (issue 7.9): table-driven."""

from __future__ import annotations

import pytest

from ferryman.errors import ClientProtocolError
from ferryman.pipeline.route.paths import PathPolicy, normalize, strip_matrix
from ferryman.pipeline.route.table import Route, RouteMatch, RouteTable

KEEP = PathPolicy(escaped_slashes="keep")
DECODE = PathPolicy(escaped_slashes="decode")
NO_MERGE = PathPolicy(merge_slashes=False)


@pytest.mark.parametrize(
    ("raw", "policy", "normal"),
    [
        (b"/", None, b"/"),
        (b"/a/b.txt", None, b"/a/b.txt"),
        (b"//admin", None, b"/admin"),
        (b"///admin", None, b"/admin"),
        (b"/a//b///c/", None, b"/a/b/c/"),
        (b"/x//../admin", None, b"/admin"),  # slashes merged first, as nginx does
        (b"/x//../admin", NO_MERGE, b"/x/admin"),
        (b"//admin", NO_MERGE, b"//admin"),
        (b"/a/./b/../c", None, b"/a/c"),
        (b"/a/b/..", None, b"/a/"),
        (b"/../../etc", None, b"/etc"),
        (b"/%2e%2E/admin", None, b"/admin"),
        (b"/x/%2e%2e/admin", None, b"/admin"),
        (b"/%61dmin", None, b"/admin"),
        (b"/%7euser", None, b"/~user"),
        (b"/caf%c3%a9", None, b"/caf%C3%A9"),
        (b"/a%20b", None, b"/a%20b"),
        (b"/a\\b", None, b"/a/b"),
        (b"/x\\..\\admin", None, b"/admin"),
        (b"/admin;x", None, b"/admin;x"),  # matrix parameters are a route option, kept on the wire
        (b"/%2Fadmin", KEEP, b"/%2Fadmin"),
        (b"/admin%2f", KEEP, b"/admin%2F"),
        (b"/x/..%2fadmin", KEEP, b"/x/..%2Fadmin"),  # one opaque segment: matched as such, sent as such
        (b"/%2Fadmin", DECODE, b"/admin"),
        (b"/admin%2f", DECODE, b"/admin/"),
        (b"/x/..%2fadmin", DECODE, b"/admin"),
        (b"/x/..%5cadmin", DECODE, b"/admin"),
        (b"*", None, b"*"),
    ],
)
def test_normal_form(raw: bytes, policy: PathPolicy | None, normal: bytes) -> None:
    assert normalize(raw, policy or PathPolicy()) == normal


@pytest.mark.parametrize(
    "raw",
    [
        b"/%2Fadmin", b"/admin%2f", b"/x/..%2fadmin", b"/a%5Cb", b"/a%5cb",  # escaped slashes: reject
        b"/admin%00", b"/a%0ab", b"/a%0D%0Ab", b"/a%1f", b"/a%7F",  # control characters
        b"/a%zz", b"/a%4", b"/a%", b"/a%%41", b"/a%4/b",  # invalid escapes
    ],
)
def test_refused_with_400(raw: bytes) -> None:
    with pytest.raises(ClientProtocolError) as info:
        normalize(raw)
    assert info.value.status == 400


@pytest.mark.parametrize("raw", [b"/admin%00", b"/a%0a"])
def test_control_characters_are_refused_whatever_the_slash_policy(raw: bytes) -> None:
    for policy in (KEEP, DECODE, NO_MERGE):
        with pytest.raises(ClientProtocolError):
            normalize(raw, policy)


def test_fast_path_returns_the_same_object() -> None:
    p = b"/api/v1/users/42"
    assert normalize(p) is p


def test_normal_form_is_idempotent() -> None:
    for raw in (b"//a/./b/../c%7e%2F", b"/x\\..%2f..%2fy"):
        once = normalize(raw, DECODE)
        assert normalize(once, DECODE) == once
        once = normalize(raw, KEEP)
        assert normalize(once, KEEP) == once


def test_strip_matrix() -> None:
    assert strip_matrix("/admin;x") == "/admin"
    assert strip_matrix("/a;b=1/c;d/e") == "/a/c/e"
    assert strip_matrix("/plain") == "/plain"


def _table(**admin: object) -> RouteTable[str]:
    return RouteTable([
        Route("admin", RouteMatch(path_prefix="/admin", **admin), "deny"),  # type: ignore[arg-type]
        Route("all", RouteMatch(), "pass"),
    ])


def _route(table: RouteTable[str], path: bytes) -> str:
    r = table.lookup(None, "GET", normalize(path), [], normal=True)
    assert r is not None
    return r.name


def test_matrix_params_are_invisible_only_to_a_route_that_asks() -> None:
    assert _route(_table(), b"/admin;x") == "all"
    opt = _table(ignore_matrix_params=True)
    for p in (b"/admin;x", b"/admin;jsessionid=1/users", b"/admin"):
        assert _route(opt, p) == "admin"
    assert _route(opt, b"/adminx;y") == "all"


def test_case_insensitive_route() -> None:
    assert _route(_table(), b"/ADMIN") == "all"
    opt = _table(case_sensitive=False)
    for p in (b"/ADMIN", b"/Admin/x", b"/admin"):
        assert _route(opt, p) == "admin"
    rx = RouteTable([Route("rx", RouteMatch(path_regex=r"/adm", case_sensitive=False), "x")])
    assert rx.lookup(None, "GET", b"/ADMIN", [], normal=True) is not None


def test_precedence_holds_across_route_options() -> None:
    table = RouteTable([
        Route("short-ci", RouteMatch(path_prefix="/api", case_sensitive=False), "a"),
        Route("long", RouteMatch(path_prefix="/api/v1"), "b"),
        Route("exact-matrix", RouteMatch(path_exact="/api/v1/ping", ignore_matrix_params=True), "c"),
        Route("rest", RouteMatch(), "d"),
    ])
    names = [r.name for r in table.candidates(None, b"/api/v1/ping;x", normal=True)]
    assert names == ["exact-matrix", "long", "short-ci", "rest"]  # exact, longest prefix, shorter, none
    names = [r.name for r in table.candidates(None, b"/API/V1/x", normal=True)]
    assert names == ["short-ci", "rest"]
