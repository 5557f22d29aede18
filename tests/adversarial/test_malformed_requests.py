"""Malformed and smuggling requests against a running forward proxy, over raw sockets.

Each request must get the right status from ferryman itself (its plain-text
error body) and the connection must then be closed: the test reads until EOF
with a bounded socket timeout.  The origin is deliberately naive (it reads
request heads only and never a body), so any body bytes a proxy let through
as a "second request" would show up in ``Origin.requests``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.origin import Origin, canned, serve
from tests.helpers.procs import Ferryman, run_ferryman
from tests.helpers.rawhttp import (
    assert_error_and_closed,
    connect,
    exchange,
    get,
    parse_response,
    read_response,
    read_to_eof,
    send_quietly,
)

pytestmark = pytest.mark.timeout(30)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
MAX_BODY = 1024


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    with serve(canned(OK, close=False)) as o:
        yield o


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ferryman]:
    tmp: Path = tmp_path_factory.mktemp("malformed")
    with run_ferryman(tmp, limits={"max_body_size": MAX_BODY}) as fm:
        yield fm


def fill(template: bytes, origin: Origin) -> bytes:
    """Templates name the origin as ORIGIN (host:port), so that the table stays readable."""
    return template.replace(b"ORIGIN", b"127.0.0.1:%d" % origin.port)


U = b"http://ORIGIN/"
H = b"Host: ORIGIN\r\n"
GET = b"GET " + U + b" HTTP/1.1\r\n" + H
POST = b"POST " + U + b" HTTP/1.1\r\n" + H
POST10 = b"POST " + U + b" HTTP/1.0\r\n" + H
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"

# Where the request is refused: on its head (nothing may reach the origin), or in its body
# (the head may already be on its way upstream; that upstream connection is then aborted).
HEAD, BODY = "head", "body"


def case(
    case_id: str, template: bytes, status: int | tuple[int, ...], where: str = HEAD, bug: str = ""
) -> object:
    marks = [pytest.mark.xfail(strict=True, reason="BUG: " + bug)] if bug else []
    return pytest.param(template, status, where, id=case_id, marks=marks)


MALFORMED = [
    case("cl-and-te", POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    case("duplicate-cl", POST + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400),
    case("conflicting-cl", POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    case("cl-list", POST + b"Content-Length: 5, 6\r\n\r\nhello!", 400),
    case("cl-plus-sign", POST + b"Content-Length: +5\r\n\r\nhello", 400),
    case("cl-negative", POST + b"Content-Length: -1\r\n\r\nhello", 400),
    case("cl-not-a-number", POST + b"Content-Length: abc\r\n\r\nhello", 400),
    case("cl-overflow", POST + b"Content-Length: 99999999999999999999999\r\n\r\nhello", 400),
    case("te-gzip-alone", POST + b"Transfer-Encoding: gzip\r\n\r\nhello", 400),
    case("te-gzip-chunked", POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    case("te-in-http10", POST10 + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    case("te-space-before-colon", POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    case("obs-fold-space", GET + b"X-Folded: a\r\n b\r\n\r\n", 400),
    case("obs-fold-tab", GET + b"X-Folded: a\r\n\tb\r\n\r\n", 400),
    case("bare-lf", b"GET " + U + b" HTTP/1.1\nHost: ORIGIN\n\n", 400),
    case("nul-in-header-value", GET + b"X-Bad: a\x00b\r\n\r\n", 400),
    case("ctl-in-header-value", GET + b"X-Bad: a\x01b\r\n\r\n", 400),
    case("del-in-header-value", GET + b"X-Bad: a\x7fb\r\n\r\n", 400),
    case("bare-cr-in-header-value", GET + b"X-Bad: a\rb\r\n\r\n", 400),
    case("space-in-header-name", GET + b"X Bad: b\r\n\r\n", 400),
    case("empty-header-name", GET + b": b\r\n\r\n", 400),
    case("chunk-size-not-hex", CHUNKED + b"zz\r\nhello\r\n0\r\n\r\n", 400, BODY),
    case("chunk-size-overflow", CHUNKED + b"fffffffffffffffffff\r\nhello\r\n0\r\n\r\n", 400, BODY),
    case("chunk-size-trailing-garbage", CHUNKED + b"5 x\r\nhello\r\n0\r\n\r\n", 400, BODY),
    case("chunk-ext-nul", CHUNKED + b"5;\x00\r\nhello\r\n0\r\n\r\n", 400, BODY),
    case("chunk-ext-open-quote", CHUNKED + b'5;a="x\r\nhello\r\n0\r\n\r\n', 400, BODY),
    case("chunk-data-overrun", CHUNKED + b"5\r\nhelloXX0\r\n\r\n", 400, BODY),
    case("chunk-bare-lf", CHUNKED + b"5\nhello\n0\n\n", 400, BODY),
    case("missing-host-http11", b"GET " + U + b" HTTP/1.1\r\n\r\n", 400),
    case("two-host", GET + H + b"\r\n", 400),
    case("userinfo-in-host", b"GET " + U + b" HTTP/1.1\r\nHost: user@ORIGIN\r\n\r\n", 400),
    case("userinfo-in-url", b"GET http://user:pw@ORIGIN/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    case("origin-form", b"GET / HTTP/1.1\r\n" + H + b"\r\n", 400),
    case("asterisk-form", b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", 400),
    case("url-port-out-of-range", b"GET http://127.0.0.1:65536/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    case("url-port-zero", b"GET http://127.0.0.1:0/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    case("url-empty-host", b"GET http://:80/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    case("scheme-ftp", b"GET ftp://ORIGIN/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    case("http2-request-line", b"GET " + U + b" HTTP/2.0\r\n" + H + b"\r\n", 400),
    case("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    case("http09-request-line", b"GET /\r\n\r\n", 400),
    case("http09-version", b"GET " + U + b" HTTP/0.9\r\n" + H + b"\r\n", 400),
    case("lowercase-method", b"get " + U + b" HTTP/1.1\r\n" + H + b"\r\n", 400),
    case("space-in-url", b"GET " + U + b"a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    case("garbage-tls-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40), 400),
    case("garbage-bytes", b"\xff\xfe\xfd\x00garbage\r\n\r\n", 400),
    case("url-too-long", b"GET " + U + b"a" * 9000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    case("header-section-too-large", GET + b"X-Big: " + b"a" * 40000 + b"\r\n\r\n", 431),
    case("too-many-headers", GET + b"".join(b"X-H%d: v\r\n" % i for i in range(120)) + b"\r\n", 431),
    case("body-over-limit", POST + b"Content-Length: 2048\r\n\r\n" + b"x" * 2048, 413, BODY),
    case("chunked-body-over-limit", CHUNKED + b"800\r\n" + b"x" * 2048 + b"\r\n0\r\n\r\n", 413, BODY),
    case("unknown-expect", GET + b"Expect: something-else\r\n\r\n", (400, 417)),
    case("connect-no-port", b"CONNECT example.com HTTP/1.1\r\nHost: example.com\r\n\r\n", 400),
    case("connect-empty-port", b"CONNECT 127.0.0.1: HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
]


def test_control_well_formed_request_is_forwarded(proxy: Ferryman, origin: Origin) -> None:
    """The table below is only meaningful if the same origin is reachable when asked properly."""
    resp = get(proxy.port, f"{origin.url}/control")
    assert resp.status == 200 and resp.body == b"ok"


@pytest.mark.parametrize(("template", "status", "where"), MALFORMED)
def test_malformed_request_gets_error_and_close(
    proxy: Ferryman, origin: Origin, template: bytes, status: int | tuple[int, ...], where: str
) -> None:
    request = fill(template, origin)
    before = len(origin.requests)
    resp = exchange(proxy.port, request, timeout=3)
    assert_error_and_closed(resp, status)
    forwarded = origin.requests[before:]
    if where == HEAD:
        assert forwarded == [], "a request refused on its head reached the origin"
    else:
        # At most this request's own (re-framed) head went upstream, never anything from its body.
        assert len(forwarded) <= 1, forwarded
        assert all(f.startswith(b"POST / HTTP/1.1\r\n") for f in forwarded), forwarded


# Ambiguous framing whose body (declared by Content-Length %d) hides a second request.
SMUGGLING = [
    pytest.param(POST + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n", id="cl-te"),
    pytest.param(POST + b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n", id="te-cl"),
    pytest.param(POST + b"Transfer-Encoding : chunked\r\nContent-Length: %d\r\n\r\n", id="te-colon"),
    pytest.param(POST + b"Transfer-Encoding:\r\n chunked\r\nContent-Length: %d\r\n\r\n", id="te-fold"),
    pytest.param(POST + b"Transfer-Encoding: xchunked\r\nContent-Length: %d\r\n\r\n", id="te-xchunked"),
    pytest.param(POST + b"Content-Length: 0\r\nContent-Length: %d\r\n\r\n", id="cl-cl"),
    pytest.param(POST10 + b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n", id="http10-te-cl"),
]


@pytest.mark.parametrize("template", SMUGGLING)
def test_smuggling_attempt_never_reaches_origin(proxy: Ferryman, origin: Origin, template: bytes) -> None:
    """A body that hides ``GET /smuggled`` behind ambiguous framing: 400, and the origin never sees it."""
    hidden = fill(b"0\r\n\r\nGET /smuggled HTTP/1.1\r\n" + H + b"\r\n", origin)
    request = fill(template % len(hidden), origin) + hidden
    before = len(origin.requests)
    resp = exchange(proxy.port, request, timeout=3)
    assert_error_and_closed(resp, 400)
    # A follow-up request on a fresh connection is served, and is the only thing the origin got.
    after = get(proxy.port, f"{origin.url}/after-smuggling")
    assert after.status == 200
    got = origin.requests[before:]
    assert [r.split(b"\r\n", 1)[0] for r in got] == [b"GET /after-smuggling HTTP/1.1"], got
    assert not any(b"/smuggled" in r for r in origin.requests)


def test_error_after_good_request_on_keep_alive_connection_closes(
    proxy: Ferryman, origin: Origin
) -> None:
    """A connection that served a request is still closed by an error, and nothing follows it."""
    with connect(proxy.port, 3) as sock:
        sock.sendall(fill(GET + b"\r\n", origin))
        first = read_response(sock, 3)
        assert first.status == 200 and first.body == b"ok"
        assert (first.header("connection") or "").lower() != "close"
        sock.sendall(fill(POST + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab", origin))
        raw, ended = read_to_eof(sock, 3)
    resp = parse_response(raw)
    resp.ended = ended
    assert_error_and_closed(resp, 400)


async def swallow(_o: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An origin that reads the whole request, body included, and never answers."""
    await reader.read()


def test_body_over_limit_sent_in_pieces_gets_413(proxy: Ferryman) -> None:
    """The body limit holds however the body arrives: here chunked, over several writes,
    while the head is already upstream (the origin waits for the body)."""
    with serve(swallow) as sink, connect(proxy.port, 3) as sock:
        sock.sendall(fill(CHUNKED, sink))
        for _ in range(3):  # 1536 bytes in all
            if not send_quietly(sock, b"200\r\n" + b"x" * 0x200 + b"\r\n"):
                break
        raw, ended = read_to_eof(sock, 3)
    resp = parse_response(raw)
    resp.ended = ended
    assert_error_and_closed(resp, 413)


def test_declared_content_length_over_limit_refused_upfront(proxy: Ferryman, origin: Origin) -> None:
    """Content-Length already says the body is too large: 413 at once, the origin never asked."""
    before = len(origin.requests)
    with connect(proxy.port, 3) as sock:
        sock.sendall(fill(POST + b"Content-Length: %d\r\n\r\n" % (MAX_BODY * 2), origin))
        raw, _ = read_to_eof(sock, 3)
    assert raw.startswith(b"HTTP/1.1 413 "), raw[:200]
    assert origin.requests[before:] == []
