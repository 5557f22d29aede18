"""Wire bytes: exact output, and round trips through the strict parsers."""

from __future__ import annotations

from typing import Any

import pytest

from ferryman.http1.events import Framing, RequestHead, ResponseHead
from ferryman.http1.parser import RequestParser, ResponseParser
from ferryman.http1.serialize import (
    LAST_CHUNK,
    chunk,
    framing_header,
    request_head,
    response_head,
    status_line,
)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_request_head(self, head: RequestHead) -> None:
        self.events.append(("head", head))

    def on_request_body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def on_request_end(self) -> None:
        self.events.append(("end", None))

    def on_response_head(self, head: ResponseHead) -> None:
        self.events.append(("head", head))

    def on_response_body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def on_response_end(self) -> None:
        self.events.append(("end", None))

    def head(self) -> Any:
        return self.events[0][1]

    def body(self) -> bytes:
        return b"".join(v for k, v in self.events if k == "body")


def parse_request(data: bytes) -> Recorder:
    sink = Recorder()
    assert RequestParser(sink, 8192, 2048, 100).feed(data) is None
    return sink


def parse_response(data: bytes, method: str = "GET") -> Recorder:
    sink = Recorder()
    p = ResponseParser(sink, 8192, 100)
    p.request_method = method
    p.feed(data)
    return sink


# -- status lines --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "line"),
    [
        (200, b"HTTP/1.1 200 OK\r\n"),
        (403, b"HTTP/1.1 403 Forbidden\r\n"),
        (407, b"HTTP/1.1 407 Proxy Authentication Required\r\n"),
        (502, b"HTTP/1.1 502 Bad Gateway\r\n"),
        (599, b"HTTP/1.1 599 Unknown\r\n"),
    ],
)
def test_status_line_default_reason(status: int, line: bytes) -> None:
    assert status_line(status) == line


def test_status_line_is_precomputed_once_per_status() -> None:
    assert status_line(404) is status_line(404)


def test_status_line_custom_reason_wins() -> None:
    assert status_line(200, b"Fine") == b"HTTP/1.1 200 Fine\r\n"
    assert status_line(200) == b"HTTP/1.1 200 OK\r\n"  # the cache is not polluted


def test_status_line_empty_custom_reason_falls_back_to_default() -> None:
    assert status_line(404, b"") == b"HTTP/1.1 404 Not Found\r\n"


# -- framing headers -------------------------------------------------------------


def test_framing_header() -> None:
    assert framing_header(Framing.LENGTH, 12) == b"Content-Length: 12\r\n"
    assert framing_header(Framing.LENGTH, 0) == b"Content-Length: 0\r\n"
    assert framing_header(Framing.CHUNKED, -1) == b"Transfer-Encoding: chunked\r\n"
    assert framing_header(Framing.NONE, 0) == b""
    assert framing_header(Framing.CLOSE, -1) == b""


# -- request heads ---------------------------------------------------------------


def test_request_head_exact_bytes() -> None:
    data = request_head(
        "POST", b"/submit?x=1", b"example.com:8080",
        [(b"User-Agent", b"t"), (b"Accept", b"*/*")], Framing.LENGTH, 3,
    )
    assert data == (
        b"POST /submit?x=1 HTTP/1.1\r\n"
        b"Host: example.com:8080\r\n"
        b"User-Agent: t\r\n"
        b"Accept: */*\r\n"
        b"Content-Length: 3\r\n"
        b"\r\n"
    )


def test_request_head_round_trips_through_parser_with_chunked_body() -> None:
    data = request_head(
        "PUT", b"/x", b"h", [(b"X-A", b"1")], Framing.CHUNKED, -1
    ) + chunk(b"hello") + chunk(b" world") + LAST_CHUNK
    sink = parse_request(data)
    head = sink.head()
    assert (head.method, head.target, head.version, head.host) == ("PUT", b"/x", "1.1", b"h")
    assert head.framing is Framing.CHUNKED
    assert head.headers == [(b"Host", b"h"), (b"X-A", b"1"), (b"Transfer-Encoding", b"chunked")]
    assert sink.body() == b"hello world"
    assert sink.events[-1][0] == "end"


def test_request_head_without_body_has_no_framing_field() -> None:
    data = request_head("GET", b"/", b"h", [], Framing.NONE, 0)
    assert data == b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    assert parse_request(data).events[-1][0] == "end"


# -- response heads --------------------------------------------------------------


def test_response_head_exact_bytes() -> None:
    data = response_head(
        201, b"Created", [(b"Location", b"/n/1")], b"Content-Length: 0\r\n"
    )
    assert data == (
        b"HTTP/1.1 201 Created\r\nLocation: /n/1\r\nContent-Length: 0\r\n\r\n"
    )


def test_response_head_round_trips_through_parser() -> None:
    data = response_head(
        200, b"OK", [(b"ETag", b'"v1"')], framing_header(Framing.LENGTH, 2)
    ) + b"hi"
    sink = parse_response(data)
    head = sink.head()
    assert head.status == 200
    assert head.headers == [(b"ETag", b'"v1"'), (b"Content-Length", b"2")]
    assert sink.body() == b"hi"


# -- chunks ---------------------------------------------------------------------


def test_chunk_size_is_lowercase_hex() -> None:
    assert chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert chunk(b"abc") == b"3\r\nabc\r\n"


def test_constants() -> None:
    assert LAST_CHUNK == b"0\r\n\r\n"


def test_empty_chunk_never_emits_the_last_chunk_marker() -> None:
    assert chunk(b"") != LAST_CHUNK
