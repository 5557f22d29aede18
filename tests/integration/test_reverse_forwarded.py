"""Forwarded headers and the upstream Host: X-Forwarded-For/-Proto/-Host and Forwarded
as the backend sees them, trusted versus untrusted clients, host_header modes."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.helpers.origin import Backend, backends
from tests.helpers.procs import Ferryman, run_reverse, upstream


@pytest.fixture(scope="module")
def api() -> Iterator[Backend]:
    with backends("api") as (b,):
        yield b


def _routes() -> list[dict[str, object]]:
    return [
        {"name": "upstream-host", "match": {"path_prefix": "/up"}, "upstream": "api",
         "host_header": "upstream"},
        {"name": "literal-host", "match": {"path_prefix": "/lit"}, "upstream": "api",
         "host_header": "internal.example:8443"},
        {"name": "default", "upstream": "api"},  # host_header defaults to preserve
    ]


@pytest.fixture(scope="module")
def untrusting(tmp_path_factory: pytest.TempPathFactory, api: Backend) -> Iterator[Ferryman]:
    with run_reverse(tmp_path_factory.mktemp("fwd-untrusted"), routes=_routes(),
                     upstreams={"api": upstream(api.url)}) as fm:
        yield fm


@pytest.fixture(scope="module")
def trusting(tmp_path_factory: pytest.TempPathFactory, api: Backend) -> Iterator[Ferryman]:
    with run_reverse(tmp_path_factory.mktemp("fwd-trusted"), routes=_routes(),
                     upstreams={"api": upstream(api.url)},
                     reverse={"trusted_proxies": ["127.0.0.0/8"]}) as fm:
        yield fm


ME = {"for": "127.0.0.1", "proto": "http", "host": "shop.example"}  # what ferryman saw of the client


def forwarded(value: str | None) -> list[dict[str, str]]:
    """RFC 7239 elements as dicts (a value may be a token or a quoted-string: both are valid)."""
    assert value is not None
    out = []
    for element in value.split(","):
        pairs = (p.strip().partition("=") for p in element.split(";"))
        out.append({k.lower(): v.strip('"') for k, _, v in pairs})
    return out


def _get(fm: Ferryman, path: str = "/", **headers: str) -> None:
    r = httpx.get(f"{fm.proxy}{path}", headers={k.replace("_", "-"): v for k, v in headers.items()},
                  trust_env=False, timeout=10)
    assert r.status_code == 200 and r.text == "api"


def test_forwarded_headers_are_set(untrusting: Ferryman, api: Backend) -> None:
    _get(untrusting, "/page", Host="shop.example")
    seen = api.last()
    assert seen.header("x-forwarded-for") == "127.0.0.1"
    assert seen.header("x-forwarded-proto") == "http"
    assert seen.header("x-forwarded-host") == "shop.example"
    assert forwarded(seen.header("forwarded")) == [ME]
    for name in ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"):
        assert seen.header_count(name) == 1


def test_untrusted_client_cannot_forge_forwarding_headers(untrusting: Ferryman, api: Backend) -> None:
    _get(untrusting, "/", Host="shop.example", X_Forwarded_For="6.6.6.6", X_Forwarded_Proto="https",
         X_Forwarded_Host="evil.example", Forwarded="for=6.6.6.6;proto=https")
    seen = api.last()
    assert seen.header("x-forwarded-for") == "127.0.0.1"  # replaced, not appended to
    assert seen.header("x-forwarded-proto") == "http"
    assert seen.header("x-forwarded-host") == "shop.example"
    assert forwarded(seen.header("forwarded")) == [ME]


def test_trusted_proxy_chain_is_appended_to(trusting: Ferryman, api: Backend) -> None:
    # The chain is read from X-Forwarded-For (reverse.forwarded_from) and Forwarded is
    # rebuilt from it: the incoming Forwarded, which named one hop fewer, is not mixed in.
    _get(trusting, "/", Host="shop.example", X_Forwarded_For="203.0.113.7, 10.0.0.2",
         X_Forwarded_Proto="https", Forwarded="for=203.0.113.7;proto=https")
    seen = api.last()
    assert seen.header("x-forwarded-for") == "203.0.113.7, 10.0.0.2, 127.0.0.1"
    assert seen.header("x-forwarded-proto") == "https"  # the trusted hop saw TLS
    assert forwarded(seen.header("forwarded")) == [
        {"for": "203.0.113.7", "proto": "https"},
        {"for": "10.0.0.2"},
        ME,
    ]
    assert seen.header_count("x-forwarded-for") == 1


def test_forwarded_agrees_with_x_forwarded_for(trusting: Ferryman, api: Backend) -> None:
    """Issue 10.5: a balancer that sends only X-Forwarded-For/-Proto."""
    _get(trusting, "/", Host="shop.example", X_Forwarded_For="203.0.113.5", X_Forwarded_Proto="https")
    seen = api.last()
    assert seen.header("x-forwarded-for") == "203.0.113.5, 127.0.0.1"
    assert seen.header("x-forwarded-proto") == "https"
    hops = forwarded(seen.header("forwarded"))
    assert [h["for"] for h in hops] == ["203.0.113.5", "127.0.0.1"]
    assert hops[0]["proto"] == "https"


def test_x_real_ip_from_an_untrusted_client_is_stripped(untrusting: Ferryman, api: Backend) -> None:
    _get(untrusting, "/", Host="shop.example", X_Real_IP="6.6.6.6")
    assert api.last().header("x-real-ip") is None


def test_x_real_ip_from_a_trusted_proxy_passes(trusting: Ferryman, api: Backend) -> None:
    _get(trusting, "/", Host="shop.example", X_Real_IP="203.0.113.5")
    assert api.last().header("x-real-ip") == "203.0.113.5"


def test_trusted_proxy_without_headers_gets_them_set(trusting: Ferryman, api: Backend) -> None:
    _get(trusting, "/", Host="shop.example")
    assert api.last().header("x-forwarded-for") == "127.0.0.1"


def test_host_header_preserve(untrusting: Ferryman, api: Backend) -> None:
    _get(untrusting, "/x", Host="Shop.Example:8080")
    assert api.last().header("host") == "Shop.Example:8080"


def test_host_header_upstream(untrusting: Ferryman, api: Backend) -> None:
    _get(untrusting, "/up/x", Host="shop.example")
    seen = api.last()
    assert seen.header("host") == f"127.0.0.1:{api.port}"
    assert seen.header_count("host") == 1
    assert seen.header("x-forwarded-host") == "shop.example"  # the original is still passed on


def test_host_header_literal(untrusting: Ferryman, api: Backend) -> None:
    _get(untrusting, "/lit/x", Host="shop.example")
    seen = api.last()
    assert seen.header("host") == "internal.example:8443"
    assert seen.header_count("host") == 1
