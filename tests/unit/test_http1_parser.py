"""Transcript tests for the sans-IO HTTP/1 parsers: bytes in, sink events out."""

from __future__ import annotations

from typing import Any

import pytest

from ferryman.errors import (
    ClientProtocolError,
    FerrymanError,
    HeadersTooLarge,
    NotImplementedByProxy,
    UpstreamClosed,
    UpstreamProtocolError,
    UriTooLong,
)
from ferryman.http1.events import Framing, RequestHead, ResponseHead
from ferryman.http1.parser import RequestParser, ResponseParser

MAX_HEADER = 8192
MAX_URL = 2048
MAX_HEADERS = 100


class Recorder:
    """A sink for both parsers that records every callback in order."""

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

    # -- views ------------------------------------------------------------
    def kinds(self) -> list[str]:
        """Event kinds with consecutive body pieces merged (segmentation-independent)."""
        out: list[str] = []
        for kind, _ in self.events:
            if kind == "body" and out and out[-1] == "body":
                continue
            out.append(kind)
        return out

    def heads(self) -> list[Any]:
        return [v for k, v in self.events if k == "head"]

    def bodies(self) -> list[bytes]:
        """One joined body per message, in order."""
        out: list[bytes] = []
        cur: bytearray | None = None
        for kind, value in self.events:
            if kind == "head":
                cur = bytearray()
            elif kind == "body":
                assert cur is not None
                cur += value
            elif kind == "end":
                assert cur is not None
                out.append(bytes(cur))
                cur = None
        return out


def request_parser(
    max_header: int = MAX_HEADER, max_url: int = MAX_URL, max_headers: int = MAX_HEADERS
) -> tuple[RequestParser, Recorder]:
    sink = Recorder()
    return RequestParser(sink, max_header, max_url, max_headers), sink


def response_parser(
    method: str = "GET", max_header: int = MAX_HEADER, max_headers: int = MAX_HEADERS
) -> tuple[ResponseParser, Recorder]:
    sink = Recorder()
    p = ResponseParser(sink, max_header, max_headers)
    p.request_method = method
    return p, sink


def feed_bytewise(p: RequestParser | ResponseParser, data: bytes) -> None:
    for i in range(len(data)):
        assert p.feed(data[i : i + 1]) is None


# =============================================================================
# Requests: well-formed
# =============================================================================


def test_simple_get_delivers_head_then_end() -> None:
    p, sink = request_parser()
    assert p.feed(b"GET /index.html HTTP/1.1\r\nHost: example.com\r\nX-A: 1\r\n\r\n") is None
    assert sink.kinds() == ["head", "end"]
    head = sink.heads()[0]
    assert head == RequestHead(
        method="GET",
        target=b"/index.html",
        version="1.1",
        headers=[(b"Host", b"example.com"), (b"X-A", b"1")],
        framing=Framing.NONE,
        content_length=0,
        keep_alive=True,
        host=b"example.com",
        connection_tokens=frozenset(),
        expect_continue=False,
    )
    assert not p.in_head


def test_header_names_keep_original_case() -> None:
    p, sink = request_parser()
    p.feed(b"GET / HTTP/1.1\r\nhOsT: a\r\nX-MiXeD: v\r\n\r\n")
    assert sink.heads()[0].headers == [(b"hOsT", b"a"), (b"X-MiXeD", b"v")]


def test_absolute_form_target_is_kept_verbatim() -> None:
    p, sink = request_parser()
    p.feed(b"GET http://example.com:8080/a/b?q=1 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n")
    head = sink.heads()[0]
    assert head.target == b"http://example.com:8080/a/b?q=1"
    assert head.host == b"example.com:8080"
    assert sink.kinds() == ["head", "end"]


def test_in_head_is_true_while_a_head_is_incomplete() -> None:
    p, sink = request_parser()
    p.feed(b"GET / HTTP/1.1\r\nHo")
    assert p.in_head
    assert sink.events == []
    p.feed(b"st: a\r\n\r\n")
    assert not p.in_head
    assert sink.kinds() == ["head", "end"]


PIPELINE = (
    b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
    b"POST /two HTTP/1.1\r\nHost: b\r\nContent-Length: 5\r\n\r\nhello"
    b"POST /three HTTP/1.1\r\nHost: c\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    b"GET /four HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n"
)


def _check_pipeline(sink: Recorder) -> None:
    assert sink.kinds() == ["head", "end", "head", "body", "end"] + [
        "head", "body", "end", "head", "end",
    ]
    heads = sink.heads()
    assert [h.target for h in heads] == [b"/one", b"/two", b"/three", b"/four"]
    assert [h.host for h in heads] == [b"a", b"b", b"c", b"d"]
    assert [h.framing for h in heads] == [
        Framing.NONE, Framing.LENGTH, Framing.CHUNKED, Framing.NONE,
    ]
    assert [h.keep_alive for h in heads] == [True, True, True, False]
    assert sink.bodies() == [b"", b"hello", b"abcde", b""]


def test_pipelined_requests_in_one_feed() -> None:
    p, sink = request_parser()
    assert p.feed(PIPELINE) is None
    _check_pipeline(sink)


def test_pipelined_requests_split_byte_by_byte() -> None:
    p, sink = request_parser()
    feed_bytewise(p, PIPELINE)
    _check_pipeline(sink)


def test_body_is_never_delivered_before_its_head_when_split() -> None:
    p, sink = request_parser()
    feed_bytewise(p, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nxyz")
    assert sink.events[0][0] == "head"
    assert all(k == "body" for k, _ in sink.events[1:-1])
    assert sink.events[-1][0] == "end"


def test_content_length_body_ends_exactly_at_length() -> None:
    p, sink = request_parser()
    p.feed(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01234")
    head = sink.heads()[0]
    assert head.framing is Framing.LENGTH
    assert head.content_length == 10
    assert sink.kinds() == ["head", "body"]  # not ended: 5 bytes still owed
    p.feed(b"56789GET / HTTP/1.1\r\nHost: b\r\n\r\n")
    assert sink.bodies() == [b"0123456789", b""]
    assert sink.kinds() == ["head", "body", "end", "head", "end"]


def test_content_length_zero_ends_at_head_and_keeps_length_framing() -> None:
    p, sink = request_parser()
    p.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    head = sink.heads()[0]
    # LENGTH (not NONE) so the next hop is told "Content-Length: 0" too.
    assert head.framing is Framing.LENGTH
    assert head.content_length == 0
    assert sink.kinds() == ["head", "end"]


def test_chunked_body_with_extensions_and_trailer() -> None:
    p, sink = request_parser()
    p.feed(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;name=value\r\nwiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n"
        b"X-Checksum: 1\r\n\r\n"
    )
    head = sink.heads()[0]
    assert head.framing is Framing.CHUNKED
    assert head.content_length == -1
    assert sink.bodies() == [b"wikipedia in\r\n\r\nchunks."]
    assert sink.kinds() == ["head", "body", "end"]


def test_chunked_body_byte_by_byte() -> None:
    p, sink = request_parser()
    feed_bytewise(
        p,
        b"PUT /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"a\r\n0123456789\r\n1\r\n!\r\n0\r\n\r\n",
    )
    assert sink.bodies() == [b"0123456789!"]
    assert sink.kinds() == ["head", "body", "end"]


def test_transfer_encoding_chunked_is_case_insensitive() -> None:
    p, sink = request_parser()
    p.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n")
    assert sink.heads()[0].framing is Framing.CHUNKED
    assert sink.kinds() == ["head", "end"]


def test_connect_returns_offset_of_tunnel_bytes() -> None:
    p, sink = request_parser()
    data = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01TLS"
    offset = p.feed(data)
    assert offset is not None
    assert data[offset:] == b"\x16\x03\x01TLS"
    head = sink.heads()[0]
    assert head.method == "CONNECT"
    assert head.target == b"example.com:443"
    assert sink.kinds() == ["head", "end"]


def test_connect_without_leftover_returns_end_of_data() -> None:
    p, _ = request_parser()
    data = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    assert p.feed(data) == len(data)


def test_upgrade_request_returns_offset() -> None:
    p, sink = request_parser()
    data = (
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        b"\x81\x00"
    )
    offset = p.feed(data)
    assert offset is not None
    assert data[offset:] == b"\x81\x00"
    assert sink.heads()[0].connection_tokens == frozenset({b"upgrade"})


def test_every_upgrade_line_is_kept() -> None:
    # The router filters the whole offer: a second line must not hide behind the first.
    p, sink = request_parser()
    p.feed(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
    assert sink.heads()[0].upgrade == b"websocket, h2c"


@pytest.mark.parametrize(
    "body", [b"", b"Content-Length: 3\r\n\r\nabc", b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"]
)
def test_restart_parses_what_follows_an_ignored_upgrade_as_http(body: bytes) -> None:
    # An Upgrade the connection does not act on (HTTP/1.0: ignored, RFC 9110 7.8): llhttp
    # hands over what follows as upgraded bytes (after the body, if any), and `restart`
    # makes it requests again.
    p, sink = request_parser()
    head = b"GET /one HTTP/1.0\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    data = head + (body or b"\r\n") + b"GET /two HTTP/1.0\r\nHost: a\r\n\r\n"
    if body.startswith(b"Transfer"):
        data = data.replace(b"HTTP/1.0\r\nHost: a\r\nConn", b"HTTP/1.1\r\nHost: a\r\nConn", 1)
    off = p.feed(data)
    assert off is not None and data[off:] == b"GET /two HTTP/1.0\r\nHost: a\r\n\r\n"
    p.restart()
    assert p.feed(data[off:]) is None
    assert [h.target for h in sink.heads()] == [b"/one", b"/two"]
    assert sink.bodies() == [b"abc" if body else b"", b""]


UP_HEAD = b"POST /up HTTP/1.1\r\nHost: a\r\nUpgrade: test\r\nConnection: Upgrade\r\n"


def _feed_pieces(p: RequestParser, data: bytes, size: int) -> tuple[int, int | None]:
    """Feed ``data`` in ``size``-byte pieces; (start of the piece that ended the body, offset)."""
    for start in range(0, len(data), size):
        off = p.feed(data[start : start + size])
        if off is not None:
            return start, off
    return len(data), None


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_upgrade_request_body_by_content_length_comes_before_the_tunnel(size: int) -> None:
    p, sink = request_parser()
    data = UP_HEAD + b"Content-Length: 5\r\n\r\nhelloTUNNEL"
    start, off = _feed_pieces(p, data, size)
    assert off is not None and data[start + off :] == b"TUNNEL"
    assert sink.kinds() == ["head", "body", "end"]
    assert sink.bodies() == [b"hello"]


@pytest.mark.parametrize("size", [1, 4, 1000])
def test_upgrade_request_chunked_body_comes_before_the_tunnel(size: int) -> None:
    p, sink = request_parser()
    body = b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nTrailer: t\r\n\r\n"
    data = UP_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body + b"\x81\x00"
    start, off = _feed_pieces(p, data, size)
    assert off is not None
    assert start + off == len(data) - 2  # the tunnel starts right after the last chunk
    assert sink.kinds() == ["head", "body", "end"]
    assert sink.bodies() == [b"hello world"]


def test_upgrade_request_body_ending_with_the_data_returns_its_length() -> None:
    p, sink = request_parser()
    assert p.feed(UP_HEAD + b"Content-Length: 3\r\n\r\n") is None
    assert sink.kinds() == ["head"]  # no end before the body
    assert p.feed(b"abc") == 3
    assert sink.bodies() == [b"abc"]


def test_upgrade_request_with_a_bad_chunk_size_is_refused() -> None:
    p, _ = request_parser()
    with pytest.raises(ClientProtocolError):
        p.feed(UP_HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n")


def test_upgrade_request_chunk_size_line_is_bounded() -> None:
    p, _ = request_parser(max_header=1024)
    p.feed(UP_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(ClientProtocolError):
        for _ in range(10):
            p.feed(b"1" + b";" * 511)


# -- keep-alive, Connection, Expect ------------------------------------------


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        (b"1.1", None, True),
        (b"1.1", b"close", False),
        (b"1.1", b"Keep-Alive, Close", False),
        (b"1.0", None, False),
        (b"1.0", b"keep-alive", True),
        (b"1.0", b"Keep-Alive", True),
    ],
)
def test_keep_alive_by_version_and_connection(
    version: bytes, connection: bytes | None, keep_alive: bool
) -> None:
    p, sink = request_parser()
    conn = b"Connection: %s\r\n" % connection if connection is not None else b""
    p.feed(b"GET / HTTP/%s\r\nHost: a\r\n%s\r\n" % (version, conn))
    head = sink.heads()[0]
    assert head.version == version.decode()
    assert head.keep_alive is keep_alive


def test_connection_and_proxy_connection_tokens_are_merged_and_lowercased() -> None:
    p, sink = request_parser()
    p.feed(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Foo\r\n"
        b"Proxy-Connection: Keep-Alive\r\n\r\n"
    )
    head = sink.heads()[0]
    assert head.connection_tokens == frozenset({b"close", b"x-foo", b"keep-alive"})
    assert head.keep_alive is False


def test_http10_without_host_is_accepted() -> None:
    p, sink = request_parser()
    p.feed(b"GET / HTTP/1.0\r\n\r\n")
    head = sink.heads()[0]
    assert head.version == "1.0"
    assert head.host is None
    assert sink.kinds() == ["head", "end"]


@pytest.mark.parametrize("value", [b"100-continue", b"100-Continue"])
def test_expect_100_continue_is_flagged(value: bytes) -> None:
    p, sink = request_parser()
    p.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nExpect: %s\r\n\r\n" % value)
    assert sink.heads()[0].expect_continue is True
    assert sink.kinds() == ["head"]  # still waiting for the body


def test_host_ipv6_literal_with_port_is_accepted() -> None:
    p, sink = request_parser()
    p.feed(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n")
    assert sink.heads()[0].host == b"[::1]:8080"


@pytest.mark.parametrize("host", [b"host..", b"host...:80", b"a..b", b"..", b"example.com..:8080"])
def test_host_with_an_empty_label_is_refused(host: bytes) -> None:
    p, _ = request_parser()
    with pytest.raises(ClientProtocolError, match="invalid Host"):
        p.feed(b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host)


def test_host_with_one_trailing_dot_is_accepted() -> None:
    p, sink = request_parser()
    p.feed(b"GET / HTTP/1.1\r\nHost: example.com.:8080\r\n\r\n")
    assert sink.heads()[0].host == b"example.com.:8080"


# =============================================================================
# Requests: limits
# =============================================================================


def test_uri_too_long() -> None:
    p, sink = request_parser(max_url=100)
    with pytest.raises(UriTooLong):
        p.feed(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert sink.events == []


def test_uri_at_the_limit_is_accepted() -> None:
    p, sink = request_parser(max_url=100)
    target = b"/" + b"a" * 99
    p.feed(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert sink.heads()[0].target == target


def test_uri_too_long_when_fed_in_pieces() -> None:
    p, _ = request_parser(max_url=100)
    p.feed(b"GET /")
    with pytest.raises(UriTooLong):
        for _ in range(20):
            p.feed(b"a" * 10)


def test_single_header_too_large() -> None:
    p, sink = request_parser(max_header=1000)
    with pytest.raises(HeadersTooLarge):
        p.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 1000 + b"\r\n\r\n")
    assert sink.events == []


def test_header_section_too_large_across_many_fields() -> None:
    p, _ = request_parser(max_header=1000, max_headers=1000)
    fields = b"".join(b"X-%03d: %s\r\n" % (i, b"v" * 40) for i in range(30))  # ~1400 bytes
    with pytest.raises(HeadersTooLarge):
        p.feed(b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n")


def test_endless_header_line_is_bounded_while_buffered() -> None:
    # llhttp buffers a header line with no CRLF; the parser must still bound it.
    p, _ = request_parser(max_header=1000, max_url=100)
    p.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
    with pytest.raises(HeadersTooLarge):
        for _ in range(50):
            p.feed(b"v" * 100)


def test_header_count_limit() -> None:
    ok, sink = request_parser(max_headers=5)
    ok.feed(b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 4 + b"\r\n")
    assert len(sink.heads()[0].headers) == 5

    p, sink = request_parser(max_headers=5)
    with pytest.raises(HeadersTooLarge):
        p.feed(b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 5 + b"\r\n")
    assert sink.events == []


def test_header_section_under_limit_is_accepted_when_segmented() -> None:
    fields = b"".join(b"X-%02d: %s\r\n" % (i, b"v" * 50) for i in range(11))
    data = b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n"  # 665 bytes < 1000
    p, sink = request_parser(max_header=1000, max_url=100)
    for i in range(0, len(data), 100):
        p.feed(data[i : i + 100])
    assert sink.kinds() == ["head", "end"]


# =============================================================================
# Requests: malformed input and smuggling vectors
# =============================================================================

_H = b"Host: a\r\n"

MALFORMED_REQUESTS: list[tuple[str, bytes, type[FerrymanError]]] = [
    ("obs-fold", b"GET / HTTP/1.1\r\n" + _H + b"X: a\r\n b\r\n\r\n", ClientProtocolError),
    ("obs-fold-tab", b"GET / HTTP/1.1\r\n" + _H + b"X: a\r\n\tb\r\n\r\n", ClientProtocolError),
    ("obs-fold-first", b"GET / HTTP/1.1\r\n X: a\r\n" + _H + b"\r\n", ClientProtocolError),
    (
        "cl-duplicate-identical",
        b"POST / HTTP/1.1\r\n" + _H + b"Content-Length: 1\r\nContent-Length: 1\r\n\r\na",
        ClientProtocolError,
    ),
    (
        "cl-conflicting",
        b"POST / HTTP/1.1\r\n" + _H + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        ClientProtocolError,
    ),
    (
        "cl-list-conflicting",
        b"POST / HTTP/1.1\r\n" + _H + b"Content-Length: 1, 2\r\n\r\nab",
        ClientProtocolError,
    ),
    ("cl-not-a-number", b"POST / HTTP/1.1\r\n" + _H + b"Content-Length: abc\r\n\r\n",
     ClientProtocolError),
    ("cl-negative", b"POST / HTTP/1.1\r\n" + _H + b"Content-Length: -1\r\n\r\n",
     ClientProtocolError),
    ("cl-plus-sign", b"POST / HTTP/1.1\r\n" + _H + b"Content-Length: +1\r\n\r\na",
     ClientProtocolError),
    (
        "cl-overflow",
        b"POST / HTTP/1.1\r\n" + _H + b"Content-Length: 99999999999999999999\r\n\r\n",
        ClientProtocolError,
    ),
    (
        "cl-then-te",
        b"POST / HTTP/1.1\r\n" + _H
        + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ClientProtocolError,
    ),
    (
        "te-then-cl",
        b"POST / HTTP/1.1\r\n" + _H
        + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        ClientProtocolError,
    ),
    ("te-gzip-only", b"POST / HTTP/1.1\r\n" + _H + b"Transfer-Encoding: gzip\r\n\r\nabc",
     ClientProtocolError),
    ("te-identity", b"POST / HTTP/1.1\r\n" + _H + b"Transfer-Encoding: identity\r\n\r\nabc",
     ClientProtocolError),
    (
        "te-chunked-not-last",
        b"POST / HTTP/1.1\r\n" + _H + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        ClientProtocolError,
    ),
    (
        "te-chunked-twice",
        b"POST / HTTP/1.1\r\n" + _H
        + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ClientProtocolError,
    ),
    ("te-empty", b"POST / HTTP/1.1\r\n" + _H + b"Transfer-Encoding: \r\n\r\n",
     ClientProtocolError),
    (
        "te-in-http10",
        b"POST / HTTP/1.0\r\n" + _H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ClientProtocolError,
    ),
    (
        "te-unsupported-coding",
        b"POST / HTTP/1.1\r\n" + _H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        NotImplementedByProxy,
    ),
    ("space-before-colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", ClientProtocolError),
    # RFC 9112 3.2: a fragment is never part of a request target, in any of its forms
    ("fragment-origin-form", b"GET /frag#sec1 HTTP/1.1\r\n" + _H + b"\r\n", ClientProtocolError),
    ("fragment-after-query", b"GET /f?a=1#x HTTP/1.1\r\n" + _H + b"\r\n", ClientProtocolError),
    ("fragment-bare", b"GET /# HTTP/1.1\r\n" + _H + b"\r\n", ClientProtocolError),
    ("fragment-absolute-form", b"GET http://a/frag#sec1 HTTP/1.1\r\n" + _H + b"\r\n",
     ClientProtocolError),
    ("space-in-name", b"GET / HTTP/1.1\r\n" + _H + b"X Y: 1\r\n\r\n", ClientProtocolError),
    ("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: a\n\n", ClientProtocolError),
    ("bare-lf-in-headers", b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", ClientProtocolError),
    ("bare-cr", b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", ClientProtocolError),
    ("nul-in-value", b"GET / HTTP/1.1\r\n" + _H + b"X: a\x00b\r\n\r\n", ClientProtocolError),
    ("nul-in-name", b"GET / HTTP/1.1\r\n" + _H + b"X\x00: y\r\n\r\n", ClientProtocolError),
    ("del-in-value", b"GET / HTTP/1.1\r\n" + _H + b"X: \x7f\r\n\r\n", ClientProtocolError),
    ("http-2.0", b"GET / HTTP/2.0\r\n" + _H + b"\r\n", ClientProtocolError),
    ("http-0.9-explicit", b"GET / HTTP/0.9\r\n" + _H + b"\r\n", ClientProtocolError),
    ("http-0.9-simple", b"GET /\r\n\r\n", ClientProtocolError),
    ("http-1.2", b"GET / HTTP/1.2\r\n" + _H + b"\r\n", ClientProtocolError),
    ("missing-host-1.1", b"GET / HTTP/1.1\r\nX: y\r\n\r\n", ClientProtocolError),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", ClientProtocolError),
    ("two-hosts-same-value", b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
     ClientProtocolError),
    ("host-userinfo", b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", ClientProtocolError),
    ("host-userinfo-pw", b"GET / HTTP/1.1\r\nHost: u:p@a:80\r\n\r\n", ClientProtocolError),
    ("host-space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", ClientProtocolError),
    ("host-slash", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", ClientProtocolError),
    ("host-tab", b"GET / HTTP/1.1\r\nHost: a\tb\r\n\r\n", ClientProtocolError),
    ("expect-unknown", b"GET / HTTP/1.1\r\n" + _H + b"Expect: 200-ok\r\n\r\n",
     ClientProtocolError),
    ("invalid-method", b"G@T / HTTP/1.1\r\n" + _H + b"\r\n", ClientProtocolError),
    ("control-char-in-target", b"GET /\x01 HTTP/1.1\r\n" + _H + b"\r\n", ClientProtocolError),
]


@pytest.mark.parametrize(
    ("data", "exc"),
    [pytest.param(d, e, id=i) for i, d, e in MALFORMED_REQUESTS],
)
def test_malformed_request_is_rejected_before_any_head(
    data: bytes, exc: type[FerrymanError]
) -> None:
    p, sink = request_parser()
    with pytest.raises(exc):
        p.feed(data)
    assert sink.events == []  # nothing reached the engine


@pytest.mark.parametrize(
    ("data", "exc"),
    [pytest.param(d, e, id=i) for i, d, e in MALFORMED_REQUESTS],
)
def test_malformed_request_is_rejected_byte_by_byte(
    data: bytes, exc: type[FerrymanError]
) -> None:
    p, sink = request_parser()
    with pytest.raises(exc):
        feed_bytewise(p, data)
    assert sink.events == []


def test_error_statuses() -> None:
    assert ClientProtocolError.status == 400
    assert UriTooLong.status == 414
    assert HeadersTooLarge.status == 431
    assert NotImplementedByProxy.status == 501
    assert UpstreamProtocolError.status == 502


_CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"zz\r\nab\r\n0\r\n\r\n", id="non-hex-size"),
        pytest.param(b"-1\r\nab\r\n0\r\n\r\n", id="negative-size"),
        pytest.param(b"0x2\r\nab\r\n0\r\n\r\n", id="0x-prefix"),
        pytest.param(b" 2\r\nab\r\n0\r\n\r\n", id="leading-space"),
        pytest.param(b"ffffffffffffffffff\r\nab\r\n0\r\n\r\n", id="size-overflow"),
        pytest.param(b"3\r\nabcd\r\n0\r\n\r\n", id="data-longer-than-size"),
        pytest.param(b"3\nabc\r\n0\r\n\r\n", id="bare-lf-after-size"),
        pytest.param(b"3\r\nabc\n0\r\n\r\n", id="bare-lf-after-data"),
    ],
)
def test_invalid_chunking_is_rejected_and_never_ends(body: bytes) -> None:
    p, sink = request_parser()
    with pytest.raises(ClientProtocolError):
        p.feed(_CHUNKED_HEAD + body)
    assert sink.kinds()[0] == "head"
    assert "end" not in sink.kinds()


def test_trailer_fields_do_not_leak_into_delivered_head() -> None:
    p, sink = request_parser()
    p.feed(_CHUNKED_HEAD + b"1\r\na\r\n0\r\nX-Injected: 1\r\n\r\n")
    assert sink.kinds() == ["head", "body", "end"]
    assert sink.heads()[0].headers == [(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")]


# =============================================================================
# Responses
# =============================================================================


def test_simple_response_with_content_length() -> None:
    p, sink = response_parser()
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc")
    assert sink.kinds() == ["head", "body", "end"]
    head = sink.heads()[0]
    assert head == ResponseHead(
        status=200,
        reason=b"OK",
        version="1.1",
        headers=[(b"Content-Length", b"3"), (b"X-A", b"b")],
        framing=Framing.LENGTH,
        content_length=3,
        keep_alive=True,
        connection_tokens=frozenset(),
    )
    assert sink.bodies() == [b"abc"]


def test_response_reason_phrase_is_kept() -> None:
    p, sink = response_parser()
    p.feed(b"HTTP/1.1 404 Nothing To See Here\r\nContent-Length: 0\r\n\r\n")
    assert sink.heads()[0].reason == b"Nothing To See Here"
    assert sink.heads()[0].status == 404


def test_responses_in_sequence_on_one_connection() -> None:
    p, sink = response_parser()
    p.feed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    )
    assert [h.framing for h in sink.heads()] == [Framing.LENGTH, Framing.CHUNKED]
    assert sink.bodies() == [b"abc", b"hi"]


def test_chunked_response_byte_by_byte() -> None:
    p, sink = response_parser()
    feed_bytewise(
        p, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    assert sink.kinds() == ["head", "body", "end"]
    assert sink.bodies() == [b"hello"]
    assert sink.heads()[0].content_length == -1


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"garbage\r\n\r\n", id="garbage"),
        pytest.param(b"HTTP/1.1 2000 OK\r\n\r\n", id="four-digit-status"),
        pytest.param(b"HTTP/1.1 OK\r\n\r\n", id="no-status"),
        pytest.param(b"HTTP/1.1 20x OK\r\n\r\n", id="non-digit-status"),
        pytest.param(b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", id="http2"),
        pytest.param(b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", id="bare-lf"),
        pytest.param(b"HTTP/1.1 200 OK\r\n X: a\r\n\r\n", id="leading-space"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX: a\x00\r\n\r\n", id="nul-in-value"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n", id="space-before-colon"),
    ],
)
def test_garbage_response_is_upstream_protocol_error(data: bytes) -> None:
    p, sink = response_parser()
    with pytest.raises(UpstreamProtocolError):
        p.feed(data)
    assert sink.events == []


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(b"Content-Length: 3\r\nContent-Length: 4\r\n", id="conflicting"),
        pytest.param(b"Content-Length: 3\r\nContent-Length: 3\r\n", id="duplicate"),
        pytest.param(b"Content-Length: 3, 4\r\n", id="list"),
        pytest.param(b"Content-Length: abc\r\n", id="not-a-number"),
        pytest.param(b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", id="cl-then-te"),
        pytest.param(b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", id="te-then-cl"),
        pytest.param(b"Transfer-Encoding: gzip, chunked\r\n", id="te-unsupported"),
        pytest.param(b"Transfer-Encoding: gzip\r\n", id="te-not-chunked"),
    ],
)
def test_bad_response_framing_is_upstream_protocol_error(headers: bytes) -> None:
    p, sink = response_parser()
    with pytest.raises(UpstreamProtocolError):
        p.feed(b"HTTP/1.1 200 OK\r\n" + headers + b"\r\n3\r\nabc\r\n0\r\n\r\n")
    assert sink.events == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"zz\r\nab\r\n0\r\n\r\n", id="non-hex-size"),
        pytest.param(b"3\r\nabcd\r\n0\r\n\r\n", id="data-longer-than-size"),
        pytest.param(b"ffffffffffffffffff\r\n", id="size-overflow"),
    ],
)
def test_invalid_response_chunking(body: bytes) -> None:
    p, sink = response_parser()
    with pytest.raises(UpstreamProtocolError):
        p.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert "end" not in sink.kinds()


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
    ],
)
def test_1xx_then_final_response_delivers_both(interim: bytes) -> None:
    p, sink = response_parser()
    p.feed(interim + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    assert sink.kinds() == ["head", "end", "head", "body", "end"]
    first, final = sink.heads()
    assert 100 <= first.status < 200
    assert first.framing is Framing.NONE
    assert final.status == 200
    assert sink.bodies() == [b"", b"hi"]


def test_1xx_then_final_response_byte_by_byte() -> None:
    p, sink = response_parser()
    feed_bytewise(
        p,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx",
    )
    assert [h.status for h in sink.heads()] == [100, 103, 201]
    assert sink.kinds() == ["head", "end", "head", "end", "head", "body", "end"]


def test_1xx_to_head_request_is_still_followed_by_final_head() -> None:
    p, sink = response_parser(method="HEAD")
    p.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")
    assert [h.status for h in sink.heads()] == [100, 200]
    assert sink.kinds() == ["head", "end", "head", "end"]


def test_101_hands_over_the_bytes_after_its_head() -> None:
    # The parser reports where the tunnel starts; whether a 101 was asked for is
    # the engine's decision (an unasked 101 is refused by the sink, see below).
    p, sink = response_parser()
    data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nFRAME"
    off = p.feed(data)
    assert off is not None and data[off:] == b"FRAME"
    assert [h.status for h in sink.heads()] == [101]


def test_101_refused_by_the_sink_is_an_upstream_error() -> None:
    class Refusing(Recorder):
        def on_response_head(self, head: Any) -> None:
            raise UpstreamProtocolError("unasked")

    p = ResponseParser(Refusing(), 32768, 100)
    with pytest.raises(UpstreamProtocolError):
        p.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n")


def test_head_response_with_content_length_ends_right_after_head() -> None:
    p, sink = response_parser(method="HEAD")
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    assert sink.kinds() == ["head", "end"]
    head = sink.heads()[0]
    assert head.framing is Framing.NONE
    assert head.content_length == 1000  # the GET size, kept for the client
    assert sink.bodies() == [b""]


def test_head_response_with_chunked_te_has_no_body() -> None:
    p, sink = response_parser(method="HEAD")
    p.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert sink.kinds() == ["head", "end"]
    assert sink.heads()[0].framing is Framing.NONE


def test_head_response_keep_alive_flag_matches_parser_reusability() -> None:
    p, sink = response_parser(method="HEAD")
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    head = sink.heads()[0]
    if head.keep_alive:
        # The engine will reuse the connection: the next response must parse.
        p.request_method = "GET"
        p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        assert sink.bodies() == [b"", b"ok"]


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses_end_at_head(status: int) -> None:
    p, sink = response_parser()
    p.feed(
        b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status
        + b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz"
    )
    # The 10 bytes promised by Content-Length are not consumed as a body: the
    # next bytes are parsed as the next response.
    assert [h.status for h in sink.heads()] == [status, 200]
    assert sink.heads()[0].framing is Framing.NONE
    assert sink.bodies() == [b"", b"z"]


def test_close_delimited_response() -> None:
    p, sink = response_parser()
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst ")
    p.feed(b"second")
    head = sink.heads()[0]
    assert head.framing is Framing.CLOSE
    assert head.content_length == -1
    assert head.keep_alive is False
    assert sink.kinds() == ["head", "body"]  # ends only when the connection closes
    assert b"".join(v for k, v in sink.events if k == "body") == b"first second"


def test_close_delimited_forces_keep_alive_off_even_if_asked() -> None:
    p, sink = response_parser()
    p.feed(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\nx")
    assert sink.heads()[0].framing is Framing.CLOSE
    assert sink.heads()[0].keep_alive is False


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        (b"1.1", None, True),
        (b"1.1", b"close", False),
        (b"1.1", b"Close", False),
        (b"1.0", None, False),
        (b"1.0", b"keep-alive", True),
    ],
)
def test_response_keep_alive_flags(
    version: bytes, connection: bytes | None, keep_alive: bool
) -> None:
    p, sink = response_parser()
    conn = b"Connection: %s\r\n" % connection if connection is not None else b""
    p.feed(b"HTTP/%s 200 OK\r\n%sContent-Length: 1\r\n\r\nx" % (version, conn))
    head = sink.heads()[0]
    assert head.version == version.decode()
    assert head.keep_alive is keep_alive
    assert sink.kinds() == ["head", "body", "end"]


def test_http10_response_with_transfer_encoding_is_refused() -> None:
    # RFC 9112 6.1: faulty framing; ferryman answers 502 rather than guess.
    p, sink = response_parser()
    with pytest.raises(UpstreamProtocolError):
        p.feed(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"
        )
    assert sink.heads() == []


def test_response_header_too_large() -> None:
    p, sink = response_parser(max_header=500)
    with pytest.raises(UpstreamProtocolError):
        p.feed(b"HTTP/1.1 200 OK\r\nX-Big: " + b"v" * 600 + b"\r\n\r\n")
    assert sink.events == []


def test_response_endless_header_line_is_bounded() -> None:
    p, _ = response_parser(max_header=500)
    p.feed(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    with pytest.raises(UpstreamProtocolError):
        for _ in range(20):
            p.feed(b"v" * 100)


def test_response_header_count_limit() -> None:
    p, _ = response_parser(max_headers=3)
    with pytest.raises(UpstreamProtocolError):
        p.feed(b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * 4 + b"Content-Length: 0\r\n\r\n")


def test_response_header_under_limit_is_accepted_when_segmented() -> None:
    fields = b"".join(b"X-%02d: %s\r\n" % (i, b"v" * 50) for i in range(11))
    data = b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 0\r\n\r\n"  # 676 < 1000
    p, sink = response_parser(max_header=1000)
    for i in range(0, len(data), 100):
        p.feed(data[i : i + 100])
    assert sink.kinds() == ["head", "end"]


def test_response_trailers_do_not_leak_into_delivered_head() -> None:
    p, sink = response_parser()
    p.feed(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\na\r\n0\r\nSet-Cookie: injected=1\r\n\r\n"
    )
    assert sink.kinds() == ["head", "body", "end"]
    assert sink.heads()[0].headers == [(b"Transfer-Encoding", b"chunked")]


# -- finish(): the upstream's EOF ---------------------------------------------


def test_finish_ends_close_delimited_body() -> None:
    p, sink = response_parser()
    p.feed(b"HTTP/1.1 200 OK\r\n\r\nall of it")
    assert "end" not in sink.kinds()
    p.finish()
    assert sink.kinds() == ["head", "body", "end"]
    assert sink.bodies() == [b"all of it"]


def test_finish_ends_empty_close_delimited_body() -> None:
    p, sink = response_parser()
    p.feed(b"HTTP/1.0 200 OK\r\n\r\n")
    p.finish()
    assert sink.kinds() == ["head", "end"]


@pytest.mark.parametrize(
    "partial",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", id="length"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", id="chunked"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
            id="chunked-before-last-chunk",
        ),
    ],
)
def test_finish_mid_body_is_truncation(partial: bytes) -> None:
    p, sink = response_parser()
    p.feed(partial)
    with pytest.raises(UpstreamClosed):
        p.finish()
    assert "end" not in sink.kinds()


def test_finish_mid_head_is_protocol_error() -> None:
    p, sink = response_parser()
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Le")
    with pytest.raises(UpstreamProtocolError):
        p.finish()
    assert sink.events == []


def test_finish_between_responses_is_quiet() -> None:
    p, sink = response_parser()
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    p.finish()
    assert sink.kinds() == ["head", "body", "end"]  # no second end, no error


def test_finish_after_no_body_status_is_quiet() -> None:
    p, sink = response_parser()
    p.feed(b"HTTP/1.1 204 No Content\r\n\r\n")
    p.finish()
    assert sink.kinds() == ["head", "end"]


def test_finish_after_head_response_is_quiet() -> None:
    p, sink = response_parser(method="HEAD")
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    p.finish()
    assert sink.kinds() == ["head", "end"]
