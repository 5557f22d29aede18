"""Responses ferryman writes itself (pipeline/respond.py): parsed back by the strict parser."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ferryman.errors import LoopDetected, NoHealthyUpstream, UpstreamTimeout
from ferryman.http1.events import Framing
from ferryman.pipeline import respond
from tests.unit.test_http1_serialize import parse_response


def test_text_round_trips() -> None:
    data = respond.text(403, "denied by rule «x»", close=False)
    sink = parse_response(data)
    head = sink.head()
    assert head.status == 403
    assert head.reason == b"Forbidden"
    assert head.framing is Framing.LENGTH
    body = "denied by rule «x»\n".encode()
    assert sink.body() == body
    assert head.content_length == len(body)
    assert (b"Cache-Control", b"no-store") in head.headers
    assert (b"Content-Type", b"text/plain; charset=utf-8") in head.headers
    assert head.keep_alive is True
    assert sink.events[-1][0] == "end"


def test_text_close_adds_connection_close() -> None:
    sink = parse_response(respond.text(400, "bad", close=True))
    head = sink.head()
    assert head.keep_alive is False
    assert head.connection_tokens == frozenset({b"close"})


def test_text_extra_headers() -> None:
    sink = parse_response(
        respond.text(407, "auth", close=False, extra=[(b"Proxy-Authenticate", b'Basic realm="ferryman"')])
    )
    head = sink.head()
    assert head.status == 407
    assert (b"Proxy-Authenticate", b'Basic realm="ferryman"') in head.headers


def test_error_takes_its_status_from_the_table_and_closes() -> None:
    sink = parse_response(respond.error(UpstreamTimeout("slow")))
    head = sink.head()
    assert head.status == 504 and not head.keep_alive
    assert sink.body() == b"ferryman: 504 UpstreamTimeout: slow\n"
    assert not any(n == b"Retry-After" for n, _ in head.headers)
    assert parse_response(respond.error(LoopDetected("x"))).head().status == 508


def test_retry_after_goes_with_503_and_429_once() -> None:
    head = parse_response(respond.error(NoHealthyUpstream("none"))).head()
    assert (b"Retry-After", b"5") in head.headers
    head = parse_response(respond.text(429, "slow down", close=False)).head()
    assert (b"Retry-After", b"5") in head.headers
    head = parse_response(respond.text(429, "x", close=False, extra=[(b"Retry-After", b"30")])).head()
    assert [v for n, v in head.headers if n == b"Retry-After"] == [b"30"]


def test_message_redirect_fixed_json() -> None:
    assert parse_response(respond.message(504, "only-if-cached", close=False)).body() == (
        b"ferryman: only-if-cached\n"
    )
    head = parse_response(respond.redirect(301, "https://a.test/x")).head()
    assert head.status == 301 and (b"Location", b"https://a.test/x") in head.headers
    sink = parse_response(respond.fixed(200, b"text/html", b"<p>hi</p>"))
    assert sink.head().status == 200 and sink.body() == b"<p>hi</p>"
    sink = parse_response(respond.json(404, {"error": "no"}))
    assert (b"Content-Type", b"application/json") in sink.head().headers
    assert json.loads(sink.body()) == {"error": "no"}


def test_fixed_lines() -> None:
    sink = parse_response(respond.CONTINUE_100)
    assert sink.head().status == 100
    assert [k for k, _ in sink.events] == ["head", "end"]
    assert respond.TUNNEL_ESTABLISHED == b"HTTP/1.1 200 Connection established\r\n\r\n"


def test_no_other_module_spells_a_status_line() -> None:
    """Every response ferryman writes itself comes from respond.py (serialize formats lines)."""
    src = Path(respond.__file__).resolve().parents[1]
    allowed = {src / "pipeline" / "respond.py", src / "http1" / "serialize.py"}
    offenders = [
        str(p.relative_to(src))
        for p in src.rglob("*.py")
        if p not in allowed and re.search(rb'b"HTTP/1\.[01] \d|b"HTTP/1\.1 %d', p.read_bytes())
    ]
    assert offenders == []


def test_bodiless_keeps_the_head_and_its_length_only() -> None:
    for data in (respond.text(404, "no route", close=True), respond.redirect(302, "http://a/"),
                 respond.fixed(200, b"text/plain", b"fixed")):
        head = respond.bodiless(data)
        assert data.startswith(head) and head.endswith(b"\r\n\r\n") and head.count(b"\r\n\r\n") == 1
        assert b"Content-Length: %d\r\n" % (len(data) - len(head)) in head
    assert respond.bodiless(respond.bodiless(respond.fixed(200, b"text/plain", b"x"))) == respond.bodiless(
        respond.fixed(200, b"text/plain", b"x"))
