"""Pipelines as an attacker sends them: one response per request, in request order, each
framed correctly, and the connection closed after any error (RFC 9112 9.3.2, 9.6).

A real ferryman (forward and reverse) in front of a real origin on loopback.  Every
pipeline is sent in one write and again byte by byte; the client reads strictly by the
framing each response announces (`tests.helpers.rawhttp`), so a body sent after a HEAD
answer, a response out of turn or a stray byte shows up as a wrong status or body, or as
bytes after the last response.  Each request names itself in its path and the origin
answers with ``METHOD PATH``, so a response given to the wrong request is seen.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.helpers.origin import Origin, header_value, method_of, path_of, read_body, read_head, serve
from tests.helpers.procs import Ferryman, free_port, run_ferryman, run_reverse, upstream
from tests.helpers.rawhttp import RawClient, Reader, Response, read_message, send_quietly
from tests.helpers.wait import wait_for, wait_log

pytestmark = pytest.mark.timeout(30)

NO_STORE = b"Cache-Control: no-store\r\n"
NO_LENGTH = b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n\r\n"  # a body delimited by the close
SEQ = itertools.count()
BIG_REFUSAL = 2 << 20


# -- the origin ------------------------------------------------------------------------
def _answer(status: int, body: bytes, method: str, extra: bytes = NO_STORE, reason: bytes = b"OK") -> bytes:
    head = b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n%s\r\n" % (status, reason, len(body), extra)
    return head if method == "HEAD" else head + body


async def origin_handler(origin: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """By the path's first segment: ``early`` answers before reading the body, ``hang``
    never answers, ``upgrade`` switches to an echo, ``hints`` sends 103 first, ``eof``
    frames its body by closing, ``closeafter`` closes without saying so, ``etag`` answers
    If-None-Match with 304, ``cache`` is fresh for a minute, ``echo`` returns the body,
    ``held`` answers once the test sets the origin's event named by the path; anything
    else answers ``METHOD PATH``."""
    while True:
        head = await read_head(reader)
        method, path = method_of(head), path_of(head)
        kind = path.split("/")[1]
        ident = f"{method} {path}".encode()
        if kind == "refusebig":
            # A large refusal before the (endless) body, then read on, as a server that
            # closes politely would.
            writer.write(_answer(403, b"r" * BIG_REFUSAL, method, reason=b"Forbidden"))
            await writer.drain()
            while await reader.read(65536):
                pass
            return
        if kind == "early":
            writer.write(_answer(200, b"early " + ident, method))
            await writer.drain()
            origin.bodies.append(await read_body(reader, head))
            continue
        body = await read_body(reader, head)
        origin.bodies.append(body)
        if kind == "hang":
            await reader.read()
            return
        if kind == "held":
            released = origin.event(path)
            await asyncio.get_running_loop().run_in_executor(None, released.wait, 10)
        if kind == "upgrade":
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                         b"Upgrade: websocket\r\n\r\n")
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            return
        if kind == "hints":
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            await writer.drain()
            writer.write(_answer(200, ident, method))
        elif kind == "eof":
            writer.write(NO_LENGTH + (b"" if method == "HEAD" else ident))
            await writer.drain()
            return
        elif kind == "closeafter":
            writer.write(_answer(200, ident, method))
            await writer.drain()
            return
        elif kind == "etag":
            if header_value(head, "if-none-match") == '"v1"':
                writer.write(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nCache-Control: no-store\r\n\r\n')
            else:
                writer.write(_answer(200, ident, method, b'ETag: "v1"\r\n' + NO_STORE))
        elif kind == "overlong":
            # More than the framing says, in the same write: a response to nothing.
            poison = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON"
            framed = {
                "length": _answer(200, ident, method),
                "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                           % (len(ident), ident),
                "nobody": b"HTTP/1.1 204 No Content\r\n\r\n",
            }[path.split("/")[2]]
            writer.write(framed + poison)
        elif kind == "cache":
            writer.write(_answer(200, b"cached " + path.encode(), method, b"Cache-Control: max-age=60\r\n"))
        elif kind == "echo":
            writer.write(_answer(200, ident + b" " + body, method))
        else:
            writer.write(_answer(200, ident, method))
        await writer.drain()


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    with serve(origin_handler) as o:
        yield o


DEAD = free_port()  # nothing listens here: connections are refused

TIMEOUTS = {"upstream_header": "1s", "upstream_idle": "2s", "shutdown_grace": "1s"}


@pytest.fixture(scope="module")
def forward(tmp_path_factory: pytest.TempPathFactory, origin: Origin) -> Iterator[Ferryman]:
    fwd = {
        "rules": [{"name": "blocked", "deny": {"domains": ["blocked.test"]}}],
        "direct": [".corp.example"],
        "connect_ports": [origin.port],
    }
    with run_ferryman(tmp_path_factory.mktemp("pipe-fwd"), forward=fwd, cache={"store": "memory"},
                      timeouts=TIMEOUTS) as fm:
        yield fm


@pytest.fixture(scope="module")
def reverse(tmp_path_factory: pytest.TempPathFactory, origin: Origin) -> Iterator[Ferryman]:
    routes = [
        {"name": "redirect", "match": {"path_prefix": "/redirect"}, "redirect": {"to": "http://{host}/moved{uri}",
                                                                              "status": 302}},
        {"name": "fixed", "match": {"path_prefix": "/fixed"}, "respond": {"body": "fixed answer"}},
        {"name": "dead", "match": {"path_prefix": "/dead"}, "upstream": "dead"},
        {"name": "hang", "match": {"path_prefix": "/hang"}, "upstream": "slow"},
        {"name": "cache", "match": {"path_prefix": "/cache"}, "upstream": "o", "cache": {"enabled": True}},
        *({"name": k, "match": {"path_prefix": f"/{k}"}, "upstream": "o"}
          for k in ("o", "early", "upgrade", "hints", "eof", "closeafter", "etag", "echo", "overlong",
                                "refusebig")),
    ]
    ups = {"o": upstream(origin.url), "slow": upstream(origin.url), "dead": upstream(f"http://127.0.0.1:{DEAD}")}
    with run_reverse(tmp_path_factory.mktemp("pipe-rev"), routes=routes, upstreams=ups,
                     cache={"store": "memory"}, timeouts=TIMEOUTS) as fm:
        yield fm


@dataclass
class Target:
    fm: Ferryman
    origin: Origin
    mode: str  # forward | reverse

    def req(self, method: str, path: str, headers: bytes = b"", body: bytes = b"", version: str = "1.1",
            host: str | None = None) -> bytes:
        """A request for ``path`` on the origin: absolute-form through the forward proxy,
        origin-form to the reverse one."""
        if self.mode == "forward":
            authority = host or f"127.0.0.1:{self.origin.port}"
            target = f"http://{authority}{path}"
        else:
            authority = host or "site.test"
            target = path
        if body and b"transfer-encoding" not in headers.lower():
            headers = b"Content-Length: %d\r\n" % len(body) + headers
        return b"%s %s HTTP/%s\r\nHost: %s\r\n%s\r\n%s" % (
            method.encode(), target.encode(), version.encode(), authority.encode(), headers, body)


@pytest.fixture(params=["forward", "reverse"])
def target(request: pytest.FixtureRequest, origin: Origin) -> Target:
    fm = request.getfixturevalue(request.param)
    return Target(fm, origin, request.param)


WRITES = ["one-write", "dribble"]


def send(c: RawClient, data: bytes, how: str) -> None:
    if how == "one-write":
        c.send(data)
        return
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(data)):
        if not send_quietly(c.sock, data[i:i + 1]):
            return  # ferryman answered and closed: the rest is never read


def tag(name: str) -> str:
    return f"{name}-{next(SEQ)}"


Want = tuple[int, bytes | None, str]  # status, body (None: any), request method


def read_all(c: RawClient, want: list[Want]) -> list[Response]:
    got: list[Response] = []
    for status, body, method in want:
        try:
            r = c.read_response(method)
        except (EOFError, TimeoutError) as exc:
            raise AssertionError(f"response {len(got) + 1} of {len(want)} missing: {exc}") from None
        got.append(r)
        assert r.status == status, f"response {len(got)}: {r.status} != {status}: {r.raw[:300]!r}"
        if body is not None:
            assert r.body == body, f"response {len(got)}: {r.body[:200]!r} != {body[:200]!r}"
    return got


def assert_closed(c: RawClient) -> None:
    assert c.at_eof(5), f"connection still open, or bytes after the last response: {bytes(c.buf)[:300]!r}"


def assert_open(c: RawClient, t: Target) -> None:
    """No stray bytes wait, and the connection still answers a request in its turn."""
    path = f"/o/{tag('after')}"
    r = c.request(t.req("GET", path))
    assert (r.status, r.body) == (200, f"GET {path}".encode()), r.raw[:300]


def ident(method: str, path: str) -> bytes:
    return f"{method} {path}".encode()


# -- methods and bodies mixed ------------------------------------------------------------
@pytest.mark.parametrize("how", WRITES)
def test_mixed_methods_and_bodies_answered_in_order(target: Target, how: str) -> None:
    t = target
    p = [f"/o/{tag('get')}", f"/o/{tag('head')}", f"/echo/{tag('post')}", f"/echo/{tag('chunked')}",
         f"/o/{tag('options')}", f"/o/{tag('last')}"]
    chunked = b"Transfer-Encoding: chunked\r\n"
    data = (t.req("GET", p[0]) + t.req("HEAD", p[1])
            + t.req("POST", p[2], body=b"GET /smuggled HTTP/1.1\r\n\r\n")
            + t.req("POST", p[3], chunked, b"5\r\nhello\r\n0\r\n\r\n") + t.req("OPTIONS", p[4])
            + t.req("GET", p[5]))
    with RawClient(t.fm.port) as c:
        send(c, data, how)
        got = read_all(c, [
            (200, ident("GET", p[0]), "GET"), (200, b"", "HEAD"),
            (200, ident("POST", p[2]) + b" GET /smuggled HTTP/1.1\r\n\r\n", "POST"),
            (200, ident("POST", p[3]) + b" hello", "POST"), (200, ident("OPTIONS", p[4]), "OPTIONS"),
            (200, ident("GET", p[5]), "GET"),
        ])
        assert got[1].header("content-length") == str(len(ident("HEAD", p[1])))  # HEAD: the length, no body
        assert_open(c, t)
    assert not any(path_of(h) == "/smuggled" for h in t.origin.requests)


@pytest.mark.parametrize("how", WRITES)
def test_ferryman_answers_in_a_pipeline_keep_their_turn_and_framing(reverse: Ferryman, origin: Origin,
                                                                   how: str) -> None:
    # A redirect and a fixed answer, to GET and to HEAD (no body after a HEAD answer!),
    # between proxied requests.
    t = Target(reverse, origin, "reverse")
    a, b = f"/o/{tag('a')}", f"/o/{tag('b')}"
    data = (t.req("GET", a) + t.req("GET", "/redirect/x") + t.req("HEAD", "/redirect/y")
            + t.req("GET", "/fixed/1") + t.req("HEAD", "/fixed/2") + t.req("GET", b))
    with RawClient(t.fm.port) as c:
        send(c, data, how)
        got = read_all(c, [
            (200, ident("GET", a), "GET"), (302, None, "GET"), (302, b"", "HEAD"),
            (200, b"fixed answer", "GET"), (200, b"", "HEAD"), (200, ident("GET", b), "GET"),
        ])
        assert got[1].header("location") == "http://site.test/moved/redirect/x"
        assert got[2].header("location") == "http://site.test/moved/redirect/y"
        assert got[4].header("content-length") == str(len(b"fixed answer"))
        assert_open(c, t)


@pytest.mark.parametrize("how", WRITES)
def test_pac_file_in_a_pipeline(forward: Ferryman, origin: Origin, how: str) -> None:
    t = Target(forward, origin, "forward")
    a, b = f"/o/{tag('a')}", f"/o/{tag('b')}"
    pac = b"GET /proxy.pac HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % forward.port
    data = t.req("GET", a) + pac + pac.replace(b"GET", b"HEAD", 1) + t.req("GET", b)
    with RawClient(t.fm.port) as c:
        send(c, data, how)
        got = read_all(c, [(200, ident("GET", a), "GET"), (200, None, "GET"), (200, b"", "HEAD"),
                           (200, ident("GET", b), "GET")])
        assert b"FindProxyForURL" in got[1].body
        assert got[2].header("content-length") == str(len(got[1].body))
        assert_open(c, t)


@pytest.mark.parametrize("how", WRITES)
def test_pipeline_opening_with_ferrymans_own_answer(target: Target, how: str) -> None:
    # The first answer is written at once, in the read that brought the next heads: the
    # connection is idle again for an instant, and the next request starts from there
    # (that move used to be refused by the state table: the connection died unanswered).
    t = target
    a, b = f"/o/{tag('a')}", f"/o/{tag('b')}"
    if t.mode == "forward":
        own = b"GET /proxy.pac HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % t.fm.port
    else:
        own = t.req("GET", "/fixed/1")
    with RawClient(t.fm.port) as c:
        send(c, own + t.req("GET", a) + own.replace(b"GET", b"HEAD", 1) + t.req("GET", b), how)
        read_all(c, [(200, None, "GET"), (200, ident("GET", a), "GET"), (200, b"", "HEAD"),
                     (200, ident("GET", b), "GET")])
        assert_open(c, t)


@pytest.mark.parametrize("how", WRITES)
def test_pipeline_opening_with_a_cache_hit(target: Target, how: str) -> None:
    t = target
    cached = f"/cache/{tag('c')}"
    with RawClient(t.fm.port) as c:
        assert c.request(t.req("GET", cached)).status == 200
    a = f"/o/{tag('a')}"
    with RawClient(t.fm.port) as c:
        send(c, t.req("GET", cached) + t.req("GET", a) + t.req("HEAD", cached) + t.req("GET", cached), how)
        got = read_all(c, [(200, b"cached " + cached.encode(), "GET"), (200, ident("GET", a), "GET"),
                           (200, b"", "HEAD"), (200, b"cached " + cached.encode(), "GET")])
        assert "hit" in (got[0].header("cache-status") or ""), got[0].raw[:300]
        assert_open(c, t)


@pytest.mark.parametrize("how", WRITES)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_refusal_behind_a_proxied_request_comes_after_it_then_close(target: Target, how: str,
                                                                     method: str) -> None:
    # forward: a deny rule (403); reverse: no route (404).  The request after it is never
    # answered; an answer to HEAD carries no body (it would be read as the next response).
    t = target
    a, c3 = f"/o/{tag('a')}", f"/o/{tag('c')}"
    if t.mode == "forward":
        refused, status = t.req(method, "/x", host="blocked.test"), 403
    else:
        refused, status = t.req(method, "/nowhere"), 404
    with RawClient(t.fm.port) as c:
        send(c, t.req("GET", a) + refused + t.req("GET", c3), how)
        got = read_all(c, [(200, ident("GET", a), "GET"), (status, None, method)])
        assert (got[1].header("connection") or "").lower() == "close"
        if method == "HEAD":
            assert got[1].body == b""
        else:
            assert got[1].body.startswith(b"ferryman: %d" % status)
        assert_closed(c)
    assert not any(path_of(h) == c3 for h in t.origin.requests)


# -- cache hits and 304s -------------------------------------------------------------------
@pytest.mark.parametrize("how", WRITES)
def test_cache_hit_between_proxied_requests(target: Target, how: str) -> None:
    t = target
    cached = f"/cache/{tag('c')}"
    with RawClient(t.fm.port) as c:
        r = c.request(t.req("GET", cached))
        assert (r.status, r.body) == (200, b"cached " + cached.encode())
    a, b = f"/o/{tag('a')}", f"/o/{tag('b')}"
    data = (t.req("GET", a) + t.req("GET", cached) + t.req("HEAD", cached) + t.req("GET", b)
            + t.req("GET", cached))
    with RawClient(t.fm.port) as c:
        send(c, data, how)
        got = read_all(c, [
            (200, ident("GET", a), "GET"), (200, b"cached " + cached.encode(), "GET"), (200, b"", "HEAD"),
            (200, ident("GET", b), "GET"), (200, b"cached " + cached.encode(), "GET"),
        ])
        assert "hit" in (got[1].header("cache-status") or ""), got[1].raw[:300]
        assert_open(c, t)
    assert sum(1 for h in t.origin.requests if path_of(h) == cached) == 1


@pytest.mark.parametrize("how", WRITES)
def test_304_in_a_pipeline(target: Target, how: str) -> None:
    t = target
    e, a = f"/etag/{tag('e')}", f"/o/{tag('a')}"
    data = t.req("GET", e, b'If-None-Match: "v1"\r\n') + t.req("GET", a) + t.req("GET", e)
    with RawClient(t.fm.port) as c:
        send(c, data, how)
        got = read_all(c, [(304, b"", "GET"), (200, ident("GET", a), "GET"), (200, ident("GET", e), "GET")])
        assert got[0].header("etag") == '"v1"'
        assert_open(c, t)


# -- Expect: 100-continue --------------------------------------------------------------------
@pytest.mark.parametrize("how", WRITES)
def test_expect_continue_with_its_body_in_a_pipeline(target: Target, how: str) -> None:
    t = target
    p, a = f"/echo/{tag('p')}", f"/o/{tag('a')}"
    data = t.req("POST", p, b"Expect: 100-continue\r\n", b"GET /inside HTTP/1.1\r\n\r\n") + t.req("GET", a)
    with RawClient(t.fm.port) as c:
        send(c, data, how)
        got = read_all(c, [(200, ident("POST", p) + b" GET /inside HTTP/1.1\r\n\r\n", "POST"),
                           (200, ident("GET", a), "GET")])
        assert all(h.status == 100 for h in got[0].interim)
        assert got[1].interim == []
        assert_open(c, t)


def test_expect_continue_queued_behind_a_request_gets_its_100_after_that_response(target: Target) -> None:
    # The 100 belongs to the second request: it comes after the first one's response, and
    # the body sent on it is that request's, never a request of its own.
    t = target
    a, p = f"/o/{tag('a')}", f"/echo/{tag('p')}"
    body = b"GET /inside HTTP/1.1\r\nHost: x\r\n\r\n"
    head = t.req("POST", p, b"Content-Length: %d\r\nExpect: 100-continue\r\n" % len(body))
    with RawClient(t.fm.port) as c:
        c.send(t.req("GET", a) + head)
        r1 = c.read_response()
        assert (r1.status, r1.body, r1.interim) == (200, ident("GET", a), [])
        assert c.read_head().status == 100
        c.send(body + t.req("GET", a))
        r2 = c.read_response("POST")
        assert (r2.status, r2.body) == (200, ident("POST", p) + b" " + body)
        r3 = c.read_response()
        assert (r3.status, r3.body) == (200, ident("GET", a))
        assert_open(c, t)
    assert not any(path_of(h) == "/inside" for h in t.origin.requests)


# -- origins that misbehave or frame oddly ------------------------------------------------------
@pytest.mark.parametrize("how", WRITES)
def test_early_hints_stay_with_their_request(target: Target, how: str) -> None:
    t = target
    a, h, b = f"/o/{tag('a')}", f"/hints/{tag('h')}", f"/o/{tag('b')}"
    with RawClient(t.fm.port) as c:
        send(c, t.req("GET", a) + t.req("GET", h) + t.req("GET", b), how)
        got = read_all(c, [(200, ident("GET", a), "GET"), (200, ident("GET", h), "GET"),
                           (200, ident("GET", b), "GET")])
        assert got[0].interim == [] and got[2].interim == []
        assert [i.status for i in got[1].interim] == [103]
        assert got[1].interim[0].get("link") == "</style.css>; rel=preload"
        assert_open(c, t)


def test_early_hints_not_sent_to_an_http10_client(target: Target) -> None:
    t = target
    h = f"/hints/{tag('h')}"
    with RawClient(t.fm.port) as c:
        c.send(t.req("GET", h, b"Connection: keep-alive\r\n", version="1.0"))
        r = c.read_response()
        assert (r.status, r.body, r.interim) == (200, ident("GET", h), [])


@pytest.mark.parametrize("how", WRITES)
def test_origin_answering_before_the_body(target: Target, how: str) -> None:
    # Whether ferryman keeps the connection (the body was all read) or closes it (the answer
    # came first), the answers that come are in order and nothing stray follows.
    t = target
    e, a = f"/early/{tag('e')}", f"/o/{tag('a')}"
    body = b"x" * 2000
    with RawClient(t.fm.port) as c:
        send(c, t.req("POST", e, body=body) + t.req("GET", a), how)
        r1 = c.read_response("POST")
        assert (r1.status, r1.body) == (200, b"early " + ident("POST", e))
        if (r1.header("connection") or "").lower() == "close":
            assert_closed(c)
        else:
            r2 = c.read_response()
            assert (r2.status, r2.body) == (200, ident("GET", a))


@pytest.mark.parametrize("how", WRITES)
def test_origin_closing_without_saying_so(target: Target, how: str) -> None:
    # The pooled connection is dead by the next request: a GET is sent again on a new one.
    t = target
    p = [f"/closeafter/{tag('1')}", f"/o/{tag('2')}", f"/closeafter/{tag('3')}", f"/o/{tag('4')}"]
    with RawClient(t.fm.port) as c:
        send(c, b"".join(t.req("GET", x) for x in p), how)
        read_all(c, [(200, ident("GET", x), "GET") for x in p])
        assert_open(c, t)


@pytest.mark.parametrize("how", WRITES)
def test_close_delimited_response_in_the_middle(target: Target, how: str) -> None:
    # HTTP/1.1 client: re-framed chunked, the connection goes on.
    t = target
    a, e, b = f"/o/{tag('a')}", f"/eof/{tag('e')}", f"/o/{tag('b')}"
    with RawClient(t.fm.port) as c:
        send(c, t.req("GET", a) + t.req("GET", e) + t.req("HEAD", e) + t.req("GET", b), how)
        got = read_all(c, [(200, ident("GET", a), "GET"), (200, ident("GET", e), "GET"), (200, b"", "HEAD"),
                           (200, ident("GET", b), "GET")])
        assert got[1].framing == "chunked"
        assert_open(c, t)


@pytest.mark.parametrize("how", WRITES)
@pytest.mark.parametrize("framing", ["length", "chunked", "nobody"])
def test_bytes_after_a_framed_response_never_answer_the_next_request(target: Target, how: str,
                                                                       framing: str) -> None:
    # The origin sends a whole extra response after the one it framed, in the same write.
    # The pipelined request after it used to be sent on that connection at once, inside
    # the read, and got the extra bytes as its response.
    t = target
    o, a = f"/overlong/{framing}/{tag('x')}", f"/o/{tag('a')}"
    first = (204, b"") if framing == "nobody" else (200, ident("GET", o))
    with RawClient(t.fm.port) as c:
        send(c, t.req("GET", o) + t.req("GET", a) + t.req("GET", o) + t.req("GET", a), how)
        second = (200, ident("GET", a), "GET")
        read_all(c, [(*first, "GET"), second, (*first, "GET"), second])
        assert_open(c, t)


def test_close_delimited_response_to_http10_client_closes(target: Target) -> None:
    t = target
    e, b = f"/eof/{tag('e')}", f"/o/{tag('b')}"
    ka = b"Connection: keep-alive\r\n"
    with RawClient(t.fm.port) as c:
        c.send(t.req("GET", e, ka, version="1.0") + t.req("GET", b, ka, version="1.0"))
        r = c.read_response()
        assert (r.status, r.body, r.framing) == (200, ident("GET", e), "close")
    assert not any(path_of(h) == b for h in t.origin.requests)


def test_answer_before_the_body_reaches_a_slow_client_whole(target: Target) -> None:
    # RFC 9112 9.6: the origin refuses a big upload at once; ferryman relays the refusal and
    # ends the connection while the client is still sending.  Closed with the client's bytes
    # unread, the socket sent a reset that threw away the part of the answer still queued
    # for a client slow to read it; a half-close, reading on until the client closes, keeps it.
    t = target
    path = f"/refusebig/{tag('r')}"
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", t.fm.port))
    stop = threading.Event()

    def upload() -> None:
        chunk = b"u" * 65536
        for _ in range(2000):  # at most 128 MiB
            if stop.is_set() or not send_quietly(sock, chunk):
                return

    sender = threading.Thread(target=upload, daemon=True)
    with sock:
        sock.sendall(t.req("POST", path, b"Content-Length: 1000000000\r\n"))
        sender.start()
        wait_log(t.fm.access_log, lambda e: path in str(e.get("target")) and e.get("status") == 403)
        r = Reader(sock)
        try:
            resp = read_message(r, "POST", timeout=10)
        finally:
            stop.set()
        sender.join(10)
        assert resp.status == 403
        assert resp.complete and len(resp.body) == BIG_REFUSAL, f"{len(resp.body)} bytes, {resp.ended}"
        assert (resp.header("connection") or "").lower() == "close"


# -- errors in the middle --------------------------------------------------------------------------
@pytest.mark.parametrize("how", WRITES)
@pytest.mark.parametrize("fault", ["refused", "timeout"])
def test_upstream_failure_in_the_middle_answers_in_turn_then_closes(target: Target, how: str,
                                                                    fault: str) -> None:
    t = target
    a, c3 = f"/o/{tag('a')}", f"/o/{tag('c')}"
    if fault == "refused":
        bad = (t.req("GET", "/dead/x", host=f"127.0.0.1:{DEAD}") if t.mode == "forward"
               else t.req("GET", "/dead/x"))
        status = 502
    else:
        bad, status = t.req("GET", f"/hang/{tag('h')}"), 504
    with RawClient(t.fm.port) as c:
        send(c, t.req("GET", a) + bad + t.req("GET", c3), how)
        got = read_all(c, [(200, ident("GET", a), "GET"), (status, None, "GET")])
        assert got[1].body.startswith(b"ferryman: %d" % status), got[1].raw[:300]
        assert (got[1].header("connection") or "").lower() == "close"
        assert_closed(c)
    assert not any(path_of(h) == c3 for h in t.origin.requests)


def test_half_close_after_a_pipeline_still_answers_every_request(target: Target) -> None:
    t = target
    p = [f"/o/{tag(str(i))}" for i in range(3)]
    with RawClient(t.fm.port) as c:
        c.send(b"".join(t.req("GET", x) for x in p))
        c.shutdown_write()
        read_all(c, [(200, ident("GET", x), "GET") for x in p])
        assert_closed(c)


# -- tunnels -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", WRITES)
def test_upgrade_behind_a_get_becomes_the_tunnel(target: Target, how: str) -> None:
    t = target
    a, u = f"/o/{tag('a')}", f"/upgrade/{tag('u')}"
    ws = b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
    with RawClient(t.fm.port) as c:
        send(c, t.req("GET", a) + t.req("GET", u, ws) + b"GET /not-a-request HTTP/1.1\r\n\r\n", how)
        r1 = c.read_response()
        assert (r1.status, r1.body) == (200, ident("GET", a))
        assert c.read_head().status == 101
        want = b"GET /not-a-request HTTP/1.1\r\n\r\n"
        assert c.read_exact(len(want)) == want  # echoed through the tunnel, never parsed
    assert not any(path_of(h) == "/not-a-request" for h in t.origin.requests)


@pytest.mark.parametrize("how", WRITES)
def test_upgrade_in_an_http10_request_is_ignored(target: Target, how: str) -> None:
    # RFC 9110 7.8: Upgrade in an HTTP/1.0 request is ignored.  One answer each, and what
    # follows such a head is the next request: it used to get a second answer (a 400 after
    # ferryman's own 200), or a 400 in place of the proxied one's.
    t = target
    up = b"Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n"
    if t.mode == "forward":
        own = b"GET /proxy.pac HTTP/1.0\r\nHost: 127.0.0.1:%d\r\n%s\r\n" % (t.fm.port, up)
    else:
        own = t.req("GET", "/fixed/1", up, version="1.0")
    a, b = f"/o/{tag('a')}", f"/o/{tag('b')}"
    ka = b"Connection: keep-alive\r\n"
    data = own + t.req("GET", a, up, version="1.0") + t.req("GET", b, ka, version="1.0")
    with RawClient(t.fm.port) as c:
        send(c, data, how)
        got = read_all(c, [(200, None, "GET"), (200, ident("GET", a), "GET"), (200, ident("GET", b), "GET")])
        assert [(r.header("connection") or "").lower() for r in got[1:]] == ["keep-alive"] * 2
        assert_open(c, t)
    heads = [h for h in t.origin.requests if path_of(h) == a]
    assert len(heads) == 1 and header_value(heads[0], "upgrade") is None


@pytest.mark.parametrize("how", WRITES)
def test_connect_behind_a_get_refused_after_its_response(forward: Ferryman, origin: Origin, how: str) -> None:
    t = Target(forward, origin, "forward")
    # The GET is answered only once the whole pipeline is sent: dribbled, a CONNECT arriving
    # after the GET's answer would be a CONNECT on an idle connection (a tunnel, rightly).
    a = f"/held/{tag('a')}"
    connect = b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (origin.port, origin.port)
    with RawClient(t.fm.port) as c:
        send(c, t.req("GET", a) + connect + b"GET /o/inside HTTP/1.1\r\nHost: x\r\n\r\n", how)
        wait_for(lambda: any(path_of(h) == a for h in origin.requests), what="the GET at the origin")
        origin.event(a).set()
        got = read_all(c, [(200, ident("GET", a), "GET"), (400, None, "GET")])
        assert (got[1].header("connection") or "").lower() == "close"
        assert_closed(c)
    assert not any(path_of(h) == "/o/inside" for h in origin.requests)


@pytest.mark.parametrize("how", WRITES)
def test_request_after_connect_in_the_same_write_goes_through_the_tunnel(forward: Ferryman, origin: Origin,
                                                                         how: str) -> None:
    inside = f"/o/{tag('inside')}"
    connect = b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (origin.port, origin.port)
    with RawClient(forward.port) as c:
        send(c, connect + b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % inside.encode(), how)
        assert c.read_head().status == 200
        r = c.read_response()  # the origin's own answer, through the tunnel
        assert (r.status, r.body) == (200, ident("GET", inside))
        assert r.header("via") is None  # raw bytes from the origin, not a proxied response
