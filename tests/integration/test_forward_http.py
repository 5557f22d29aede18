"""Plain-HTTP forwarding through a real ferryman process, with curl, httpx and raw sockets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.origin import Origin, echo_handler, read_request, request_path, response, scripted, serve
from tests.helpers.procs import Ferryman, Nginx
from tests.helpers.rawhttp import curl, proxy_request, raw_client


def _json(data: bytes) -> dict[str, object]:
    return json.loads(data)  # type: ignore[no-any-return]


@pytest.fixture
def echo() -> Iterator[Origin]:
    with serve(echo_handler) as o:
        yield o


# -- GET / HEAD / POST with real clients -----------------------------------------------
def test_curl_get(ferryman: Ferryman, nginx: Nginx) -> None:
    out = curl("-x", ferryman.proxy, f"{nginx.url}/small")
    assert out.stdout == b"hello from nginx\n"


def test_httpx_get_one_megabyte_intact(ferryman: Ferryman, nginx: Nginx) -> None:
    with httpx.Client(proxy=ferryman.proxy, trust_env=False, timeout=10) as client:
        r = client.get(f"{nginx.url}/1m")
    assert r.status_code == 200
    assert r.content == (nginx.root / "1m").read_bytes()


def test_head_with_curl_and_httpx(ferryman: Ferryman, nginx: Nginx) -> None:
    out = curl("-I", "-w", "size=%{size_download}", "-x", ferryman.proxy, f"{nginx.url}/small")
    text = out.stdout.decode()
    assert text.startswith("HTTP/1.1 200")
    assert "content-length: 17" in text.lower()
    assert text.endswith("size=0")
    with httpx.Client(proxy=ferryman.proxy, trust_env=False, timeout=10) as client:
        r = client.head(f"{nginx.url}/small")
        assert r.status_code == 200 and r.headers["content-length"] == "17" and r.content == b""
        # the connection is still usable after a body-less HEAD response
        assert client.get(f"{nginx.url}/small").content == b"hello from nginx\n"


def test_post_to_nginx(ferryman: Ferryman, nginx: Nginx) -> None:
    out = curl("-x", ferryman.proxy, "--data-binary", "a=1&b=2", f"{nginx.url}/echo")
    assert out.stdout == b"POST /echo\n"


def test_curl_post_content_length_body_arrives_intact(
    ferryman: Ferryman, echo: Origin, tmp_path: Path
) -> None:
    body = os.urandom(300_000)
    f = tmp_path / "body.bin"
    f.write_bytes(body)
    out = curl("-x", ferryman.proxy, "-H", "Expect:", "--data-binary", f"@{f}", f"{echo.url}/upload")
    info = _json(out.stdout)
    assert info["line"] == "POST /upload HTTP/1.1"
    assert info["cl"] == str(len(body)) and info["te"] is None
    assert info["len"] == len(body) and info["sha256"] == hashlib.sha256(body).hexdigest()


def test_curl_chunked_upload_arrives_chunked_and_intact(ferryman: Ferryman, echo: Origin) -> None:
    body = os.urandom(250_000)
    out = curl(
        "-x", ferryman.proxy, "-T", "-", "-X", "POST", "-H", "Transfer-Encoding: chunked",
        "-H", "Expect:", f"{echo.url}/chunked", stdin=body,
    )
    info = _json(out.stdout)
    assert info["line"] == "POST /chunked HTTP/1.1"
    assert info["te"] == "chunked" and info["cl"] is None
    assert info["len"] == len(body) and info["sha256"] == hashlib.sha256(body).hexdigest()


def test_httpx_post_bytes_and_streamed_body(ferryman: Ferryman, echo: Origin) -> None:
    body = os.urandom(100_000)

    def gen() -> Iterator[bytes]:
        for i in range(0, len(body), 7_000):
            yield body[i : i + 7_000]

    with httpx.Client(proxy=ferryman.proxy, trust_env=False, timeout=10) as client:
        fixed = client.post(f"{echo.url}/fixed", content=body).json()
        streamed = client.post(f"{echo.url}/streamed", content=gen()).json()
    digest = hashlib.sha256(body).hexdigest()
    assert fixed["cl"] == str(len(body)) and fixed["sha256"] == digest
    assert streamed["te"] == "chunked" and streamed["sha256"] == digest


# -- connection reuse and pipelining --------------------------------------------------------
def test_curl_keep_alive_reuses_client_and_upstream_connections(ferryman: Ferryman, echo: Origin) -> None:
    out = curl("-v", "-x", ferryman.proxy, f"{echo.url}/one", f"{echo.url}/two")
    assert b"Re-using existing connection" in out.stderr
    assert b'"line": "GET /one HTTP/1.1"' in out.stdout
    assert b'"line": "GET /two HTTP/1.1"' in out.stdout
    # the upstream connection was pooled and reused for the second request too
    assert echo.connections == 1
    assert [request_path(h) for h in echo.requests] == ["/one", "/two"]


def test_pipelined_requests_answered_in_order(ferryman: Ferryman, nginx: Nginx) -> None:
    with raw_client(ferryman.port) as c:
        c.send(proxy_request(f"{nginx.url}/echo?first") + proxy_request(f"{nginx.url}/echo?second")
               + proxy_request(f"{nginx.url}/small"))
        r1, r2, r3 = c.read_response(), c.read_response(), c.read_response()
    assert (r1.status, r1.body) == (200, b"GET /echo?first\n")
    assert (r2.status, r2.body) == (200, b"GET /echo?second\n")
    assert (r3.status, r3.body) == (200, b"hello from nginx\n")


def test_malformed_request_pipelined_behind_good_ones_answered_last(ferryman: Ferryman, nginx: Nginx) -> None:
    # The 400 is the third request's: the two before it get their own responses first
    # (it used to take the place of the first one's, which never came).
    bad = b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1, 2\r\n\r\n"
    with raw_client(ferryman.port) as c:
        c.send(proxy_request(f"{nginx.url}/echo?first") + proxy_request(f"{nginx.url}/echo?second") + bad)
        r1, r2, r3 = c.read_response(), c.read_response(), c.read_response()
        assert c.read_to_eof() == b""
    assert (r1.status, r1.body) == (200, b"GET /echo?first\n")
    assert (r2.status, r2.body) == (200, b"GET /echo?second\n")
    assert r3.status == 400


def test_pipelined_post_bodies_stay_with_their_requests(ferryman: Ferryman, echo: Origin) -> None:
    a, b = b"A" * 50_000, b"B" * 70
    with raw_client(ferryman.port) as c:
        c.send(proxy_request(f"{echo.url}/a", method="POST", body=a)
               + proxy_request(f"{echo.url}/b", method="POST", body=b)
               + proxy_request(f"{echo.url}/c"))
        infos = [_json(c.read_response().body) for _ in range(3)]
    assert [i["line"] for i in infos] == ["POST /a HTTP/1.1", "POST /b HTTP/1.1", "GET /c HTTP/1.1"]
    assert [i["len"] for i in infos] == [len(a), len(b), 0]
    assert infos[0]["sha256"] == hashlib.sha256(a).hexdigest()
    assert infos[1]["sha256"] == hashlib.sha256(b).hexdigest()


def test_client_half_close_after_request_still_gets_response(ferryman: Ferryman, nginx: Nginx) -> None:
    with raw_client(ferryman.port) as c:
        c.send(proxy_request(f"{nginx.url}/small"))
        c.shutdown_write()
        r = c.read_response()
        assert r.status == 200 and r.body == b"hello from nginx\n"
        assert c.at_eof(5)


async def drop_second_request(origin: Origin, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
    """First connection: answer one request, then read the next and close unanswered
    (an origin timing out an idle keep-alive connection just as it is reused)."""
    first = origin.connections == 1
    await read_request(origin, reader)
    writer.write(response(200, b"answered"))
    await writer.drain()
    if first:
        await read_request(origin, reader)
        writer.transport.abort()
        return
    while True:
        await read_request(origin, reader)
        writer.write(response(200, b"answered"))
        await writer.drain()


def test_stale_pooled_connection_retried_for_get(ferryman: Ferryman) -> None:
    with serve(drop_second_request) as o, raw_client(ferryman.port) as c:
        assert c.request(proxy_request(f"{o.url}/one")).body == b"answered"
        r = c.request(proxy_request(f"{o.url}/two"))
        assert (r.status, r.body) == (200, b"answered")
        assert [request_path(h) for h in o.requests] == ["/one", "/two", "/two"]
        assert o.connections == 2


def test_non_idempotent_request_not_retried_on_stale_pooled_connection(ferryman: Ferryman) -> None:
    with serve(drop_second_request) as o, raw_client(ferryman.port) as c:
        assert c.request(proxy_request(f"{o.url}/one")).body == b"answered"
        r = c.request(proxy_request(f"{o.url}/order", method="POST", headers={"Content-Length": "0"}))
        # the origin may have acted on the POST before closing: it must not see it twice
        assert [request_path(h) for h in o.requests].count("/order") == 1
        assert r.status == 502


def test_request_aimed_at_the_proxy_itself_is_508(ferryman: Ferryman) -> None:
    with raw_client(ferryman.port) as c:
        r = c.request(proxy_request(f"http://127.0.0.1:{ferryman.port}/loop"))
        assert r.status == 508
        assert c.at_eof(5)


# -- header rewriting ---------------------------------------------------------------
HOP_REQUEST = {
    "Connection": "keep-alive, X-Secret",
    "X-Secret": "1",
    "Proxy-Connection": "keep-alive",
    "Keep-Alive": "timeout=5",
    "TE": "trailers",
    "Proxy-Authorization": "Basic dXNlcjpwYXNz",
    "X-Keep": "yes",
}


def test_hop_by_hop_request_headers_not_forwarded(ferryman: Ferryman, echo: Origin) -> None:
    with raw_client(ferryman.port) as c:
        r = c.request(proxy_request(f"{echo.url}/hop", headers=HOP_REQUEST))
    assert r.status == 200
    (head,) = echo.requests
    lines = head.decode("latin-1").split("\r\n")[1:]
    names = {ln.split(":", 1)[0].strip().lower() for ln in lines if ln}
    for gone in ("x-secret", "proxy-connection", "keep-alive", "te", "proxy-authorization"):
        assert gone not in names, f"{gone} reached the origin:\n{head.decode()}"
    assert "x-keep" in names
    conn = [ln for ln in lines if ln.lower().startswith("connection:")]
    assert all("x-secret" not in ln.lower() for ln in conn)


def test_hop_by_hop_request_headers_not_forwarded_to_nginx(ferryman: Ferryman, nginx: Nginx) -> None:
    out = curl(
        "-x", ferryman.proxy, "-H", "Connection: X-Secret", "-H", "X-Secret: 1",
        "-H", "Proxy-Connection: keep-alive", "-H", "TE: trailers", f"{nginx.url}/headers",
    )
    text = out.stdout.decode()
    assert " te= " in text and " pc= " in text and text.rstrip().endswith("x=")
    assert "secret" not in text.lower()


def test_hop_by_hop_response_headers_not_relayed(ferryman: Ferryman) -> None:
    raw = response(200, b"body", {
        "Connection": "X-Foo", "X-Foo": "1", "Keep-Alive": "timeout=5",
        "Proxy-Authenticate": 'Basic realm="origin"', "X-Bar": "2",
    })
    with serve(scripted(lambda _h: raw)) as o, raw_client(ferryman.port) as c:
        r = c.request(proxy_request(f"{o.url}/r"))
        assert r.status == 200 and r.body == b"body"
        names = r.head.names()
        for gone in ("x-foo", "keep-alive", "proxy-authenticate"):
            assert gone not in names, r.head.raw.decode()
        assert r.head.get("x-bar") == "2"
        assert all("x-foo" not in v.lower() for v in r.head.all("connection"))
        # still keep-alive: a second request on the same client connection works
        assert c.request(proxy_request(f"{o.url}/again")).body == b"body"


def test_via_added_to_request_and_response(ferryman: Ferryman, nginx: Nginx) -> None:
    with raw_client(ferryman.port) as c:
        r = c.request(proxy_request(f"{nginx.url}/headers", headers={"Via": "1.1 earlier-proxy"}))
    assert r.status == 200
    via_resp = r.head.get("via")
    assert via_resp is not None and via_resp.startswith("1.1 ") and "(ferryman)" in via_resp
    body = r.body.decode()
    via_req = body.split(" via=", 1)[1].split(" conn=", 1)[0]
    # the client's Via is kept and ferryman's entry appended after it
    assert via_req.startswith("1.1 earlier-proxy, 1.1 ") and via_req.endswith("(ferryman)")


def test_via_names_the_received_protocol_version(ferryman: Ferryman, nginx: Nginx) -> None:
    with raw_client(ferryman.port) as c:
        r = c.request(proxy_request(f"{nginx.url}/headers", version="1.0"))
    assert r.status == 200
    assert b" via=1.0 " in r.body


def test_absolute_form_authority_wins_over_host_header(ferryman: Ferryman, nginx: Nginx) -> None:
    with raw_client(ferryman.port) as c:
        r = c.request(proxy_request(f"{nginx.url}/headers", headers={"Host": "elsewhere.example:8080"}))
    assert r.status == 200
    assert r.body.startswith(f"host=127.0.0.1:{nginx.port} ".encode())


# -- HTTP/1.0 clients -----------------------------------------------------------------
def test_http10_client_gets_delimited_response_then_close(ferryman: Ferryman, nginx: Nginx) -> None:
    with raw_client(ferryman.port) as c:
        c.send(f"GET {nginx.url}/small HTTP/1.0\r\n\r\n".encode())
        r = c.read_response()
        assert r.status == 200 and r.body == b"hello from nginx\n"
        assert r.framing in ("length", "close")
        assert not r.head.has("transfer-encoding")
        assert c.at_eof(5)


def test_http10_keep_alive_client_reuses_connection(ferryman: Ferryman, nginx: Nginx) -> None:
    with raw_client(ferryman.port) as c:
        for _ in range(2):
            keep_alive = {"Connection": "keep-alive"}
            r = c.request(proxy_request(f"{nginx.url}/small", version="1.0", headers=keep_alive))
            assert r.status == 200 and r.framing == "length" and r.body == b"hello from nginx\n"
            assert (r.head.get("connection") or "").lower() == "keep-alive"


# -- Expect: 100-continue and other 1xx ------------------------------------------------------
def test_curl_expect_100_continue(ferryman: Ferryman, echo: Origin, tmp_path: Path) -> None:
    body = os.urandom(64_000)
    f = tmp_path / "body.bin"
    f.write_bytes(body)
    out = curl("-v", "-x", ferryman.proxy, "-H", "Expect: 100-continue", "--data-binary", f"@{f}",
               "--expect100-timeout", "20", f"{echo.url}/expect")
    assert b"HTTP/1.1 100 Continue" in out.stderr
    info = _json(out.stdout)
    assert info["len"] == len(body) and info["sha256"] == hashlib.sha256(body).hexdigest()


def test_raw_client_waits_for_100_continue_before_sending_body(ferryman: Ferryman, echo: Origin) -> None:
    with raw_client(ferryman.port) as c:
        c.send(proxy_request(f"{echo.url}/wait", method="POST",
                   headers={"Content-Length": "5", "Expect": "100-continue"}))
        interim = c.read_head()  # bounded by the socket timeout: no body has been sent yet
        assert interim.status == 100
        c.send(b"hello")
        r = c.read_response()
    assert r.status == 200 and _json(r.body)["len"] == 5


EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"


def test_103_early_hints_relayed_to_http11_client(ferryman: Ferryman) -> None:
    with serve(scripted(lambda _h: [EARLY_HINTS, response(200, b"final")])) as o, \
            raw_client(ferryman.port) as c:
        r = c.request(proxy_request(f"{o.url}/hints"))
    assert [h.status for h in r.interim] == [103]
    assert r.interim[0].get("link") == "</style.css>; rel=preload"
    assert r.status == 200 and r.body == b"final"


def test_103_early_hints_not_sent_to_http10_client(ferryman: Ferryman) -> None:
    with serve(scripted(lambda _h: [EARLY_HINTS, response(200, b"final")])) as o, \
            raw_client(ferryman.port) as c:
        c.send(f"GET {o.url}/hints HTTP/1.0\r\n\r\n".encode())
        first = c.read_head()
        assert first.status == 200
        rest = c.read_to_eof()
    assert rest == b"final"
    assert b"103" not in first.raw


# -- framing of body-less and streamed responses ------------------------------------------------
def _by_path(head: bytes) -> bytes:
    path = request_path(head)
    if path == "/204":
        return b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"
    if path == "/304":
        return b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n'
    if path == "/head":
        return b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"  # HEAD: no body follows
    return response(200, b"ok")


def test_204_304_head_framing_keeps_client_connection_usable(ferryman: Ferryman) -> None:
    with serve(scripted(_by_path)) as o, raw_client(ferryman.port) as c:
        r = c.request(proxy_request(f"{o.url}/204"))
        assert r.status == 204 and r.head.get("x-a") == "1"
        assert not r.head.has("transfer-encoding") and not r.head.has("content-length")
        r = c.request(proxy_request(f"{o.url}/304", headers={"If-None-Match": '"v1"'}))
        assert r.status == 304 and r.head.get("etag") == '"v1"'
        assert not r.head.has("transfer-encoding")
        r = c.request(proxy_request(f"{o.url}/head", method="HEAD"), method="HEAD")
        assert r.status == 200 and r.head.get("content-length") == "1000"
        # any stray body byte or chunk terminator would corrupt this next response
        r = c.request(proxy_request(f"{o.url}/ok"))
        assert r.status == 200 and r.body == b"ok"
        assert not c.buf


CHUNKED = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\nhello\r\n",
           b"6\r\n world\r\n", b"0\r\n\r\n"]


def test_chunked_response_relayed_chunked_to_http11(ferryman: Ferryman) -> None:
    with serve(scripted(lambda _h: list(CHUNKED))) as o, raw_client(ferryman.port) as c:
        r = c.request(proxy_request(f"{o.url}/chunked"))
        assert r.framing == "chunked" and r.body == b"hello world"
        r = c.request(proxy_request(f"{o.url}/chunked"))
        assert r.framing == "chunked" and r.body == b"hello world"


def test_chunked_response_close_delimited_to_http10(ferryman: Ferryman) -> None:
    with serve(scripted(lambda _h: list(CHUNKED))) as o, raw_client(ferryman.port) as c:
        c.send(f"GET {o.url}/chunked HTTP/1.0\r\n\r\n".encode())
        r = c.read_response()
    assert r.status == 200 and r.framing == "close" and r.body == b"hello world"
    assert not r.head.has("transfer-encoding") and not r.head.has("content-length")


def test_close_delimited_origin_response_relayed_chunked_and_complete(ferryman: Ferryman) -> None:
    pieces = [b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", b"part one, ", b"part two"]
    with serve(scripted(lambda _h: list(pieces), close=True)) as o, \
            raw_client(ferryman.port) as c:
        r = c.request(proxy_request(f"{o.url}/eof"))
        assert r.status == 200 and r.framing == "chunked" and r.body == b"part one, part two"
        # the client connection survives the origin's close
        r = c.request(proxy_request(f"{o.url}/eof"))
        assert r.body == b"part one, part two"
        assert o.connections == 2
