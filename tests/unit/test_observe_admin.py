"""The admin API's browser guards (pure): Host names, and what may change state."""

from __future__ import annotations

import pytest

from ferryman.http1.events import Framing, Headers, RequestHead
from ferryman.observe.admin import host_allowed, may_change_state


def head(headers: Headers, host: bytes | None = b"127.0.0.1") -> RequestHead:
    return RequestHead("POST", b"/reload", "1.1", headers, Framing.NONE, 0, True, host, frozenset(), False)


@pytest.mark.parametrize(
    "host",
    [
        None, b"localhost", b"LOCALHOST:9900", b"localhost.", b"a.b.localhost:1", b"127.0.0.1",
        b"127.0.0.1:9900", b"127.255.0.9", b"[::1]", b"[::1]:9900", b"[::ffff:127.0.0.1]:1",
        b"admin.example", b"ADMIN.example.:80",
    ],
)
def test_allowed_hosts(host: bytes | None) -> None:
    assert host_allowed(host, frozenset({"admin.example"}))


@pytest.mark.parametrize(
    "host",
    [b"evil.example", b"localhost.evil.example", b"127.0.0.1.nip.io", b"10.0.0.1", b"0.0.0.0", b"[::]",
     b"[2001:db8::1]:80", b"", b"localhostx", b"admin.example.evil"],
)
def test_refused_hosts(host: bytes) -> None:
    assert not host_allowed(host, frozenset({"admin.example"}))


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        ([], False),
        ([(b"Content-Type", b"text/plain")], False),
        ([(b"Content-Type", b"application/x-www-form-urlencoded")], False),
        ([(b"Content-Type", b"multipart/form-data; boundary=x")], False),
        ([(b"Content-Type", b"application/json")], True),
        ([(b"content-type", b"Application/Json; charset=utf-8")], True),
        ([(b"X-Ferryman-Admin", b"1")], True),
        ([(b"x-ferryman-admin", b"")], True),
        ([(b"Content-Type", b"text/plain"), (b"X-Ferryman-Admin", b"yes")], True),
    ],
)
def test_what_may_change_state(headers: Headers, ok: bool) -> None:
    assert may_change_state(head(headers)) is ok
