"""httptools (llhttp, strict mode) -> head/body/end callbacks on a sink, with limits.

The parsers are sans-IO: they take bytes and call a sink; they never touch a
socket or a clock.  llhttp does the byte-level work in C; this module adds the
limits llhttp leaves to its embedder (header size, URL length, header count)
and the proxy framing rules in `framing.py`.
"""

from __future__ import annotations

from typing import Protocol

import httptools

from ferryman.errors import (
    ClientProtocolError,
    FerrymanError,
    HeadersTooLarge,
    UpstreamClosed,
    UpstreamProtocolError,
    UriTooLong,
)
from ferryman.http1.events import F_CHUNKED, F_CLOSE, F_LENGTH, Framing, Headers, RequestHead, ResponseHead
from ferryman.http1.framing import connection_tokens, request_framing, response_framing
from ferryman.http1.upgrade_body import UpgradeBody


class RequestSink(Protocol):
    def on_request_head(self, head: RequestHead) -> None: ...
    def on_request_body(self, data: bytes) -> None: ...
    def on_request_end(self) -> None: ...


class ResponseSink(Protocol):
    def on_response_head(self, head: ResponseHead) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self) -> None: ...


# Bytes a Host value may hold (RFC 3986 reg-name / IP literal / port); checked with
# bytes.translate, which deletes them in C: anything left over is invalid.
_VALID_HOST = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~:[]%!$&'()*+,;="

# The fields each head's loop reads (lower case); every other field is passed over with
# one set lookup.
_REQUEST_FIELDS = frozenset(
    {
        b"via", b"upgrade", b"host", b"content-length", b"transfer-encoding", b"connection",
        b"proxy-connection", b"expect",
    }
)
_FRAMING_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"connection"})


class RequestParser:
    """Parses a stream of pipelined requests; raises a `FerrymanError` on bad input.

    `feed` returns None normally, or the offset in ``data`` where a CONNECT (or
    other upgrade) hands the stream over to a tunnel.
    """

    __slots__ = (
        "_sink", "_p", "_url", "_headers", "_head_bytes", "_in_head", "_partial",
        "_max_header", "_max_url", "_max_headers", "_remaining", "_bypass", "_up_body",
        "_up_framing",
    )

    def __init__(self, sink: RequestSink, max_header_size: int, max_url: int, max_headers: int):
        self._sink = sink
        self._p = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: Headers = []
        self._head_bytes = 0
        self._partial = 0
        self._in_head = False
        self._max_header = max_header_size
        self._max_url = max_url
        # Content-Length bodies skip llhttp once the head is parsed: the bytes are
        # counted here and handed on as the same objects (no copy per chunk).
        self._remaining = -1
        self._bypass = False
        self._max_headers = max_headers
        # An Upgrade request with a body: httptools stops at the head, so the body is
        # framed by `UpgradeBody` and the tunnel starts after it.
        self._up_framing: tuple[Framing, int] | None = None
        self._up_body: UpgradeBody | None = None

    @property
    def in_head(self) -> bool:
        return self._in_head

    def restart(self) -> None:
        """Parse what follows the last head as HTTP again: llhttp handed it over as an
        upgrade, but the request was none (an Upgrade in an HTTP/1.0 request is ignored,
        RFC 9110 7.8).  Its body, if it had one, was read to its end already."""
        self._p = httptools.HttpRequestParser(self)
        self._up_body = None
        self._up_framing = None
        self._bypass = False
        self._remaining = -1

    def close(self) -> None:
        """No more input: let go of the sink, and of the llhttp parser, which holds this
        object's methods (a cycle), so that reference counting frees them, not the collector.
        Nothing may be fed after."""
        del self._p, self._sink

    def feed(self, data: bytes) -> int | None:
        if self._up_body is not None:
            end = self._up_body.feed(data)
            if end is not None:
                self._up_body = None
            return end
        if self._bypass:
            n = self._remaining
            if len(data) < n:
                self._remaining = n - len(data)
                self._sink.on_request_body(data)
                return None
            self._bypass = False
            self._remaining = -1
            self._p = httptools.HttpRequestParser(self)
            self._sink.on_request_body(data if len(data) == n else data[:n])
            self._sink.on_request_end()
            if len(data) > n:
                return self.feed(data[n:])
            return None
        try:
            self._p.feed_data(data)
        except httptools.HttpParserUpgrade as up:
            off = int(up.args[0])
            if self._up_framing is None:
                return off
            framing, length = self._up_framing
            self._up_framing = None
            self._up_body = UpgradeBody(self._sink, framing, length, self._max_header)
            if off == len(data):
                return None
            end = self.feed(data[off:])
            return None if end is None else off + end
        except httptools.HttpParserCallbackError as exc:
            ctx = exc.__context__
            if isinstance(ctx, FerrymanError):
                raise ctx from None
            raise
        except httptools.HttpParserInvalidURLError:
            raise ClientProtocolError("invalid request target") from None
        except httptools.HttpParserInvalidMethodError:
            raise ClientProtocolError("invalid method") from None
        except httptools.HttpParserError as exc:
            raise ClientProtocolError(f"malformed request: {exc}") from None
        if self._in_head:
            # llhttp buffers a partial header line internally: bound the bytes fed
            # since the last complete field (complete fields are counted exactly).
            self._partial += len(data)
            if self._partial > self._max_header + self._max_url:
                raise HeadersTooLarge("request header section too large")
        elif self._remaining > 0:
            self._bypass = True
        return None

    # -- httptools callbacks ----------------------------------------------
    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._partial = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._max_url:
            raise UriTooLong("request target too long")
        # RFC 9112 3.2: no request-target form has a fragment.  (``find``, not ``in``: on
        # bytes, ``in`` first tries its operand as an int, raising and clearing a TypeError.)
        if url.find(b"#") >= 0:
            raise ClientProtocolError("fragment (#) in the request target")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._partial = 0
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._max_header:
            raise HeadersTooLarge("request header section too large")
        self._headers.append((name, value))
        if len(self._headers) > self._max_headers:
            raise HeadersTooLarge("too many request header fields")

    def on_headers_complete(self) -> None:
        # `in_head` stays true until the head is accepted: a refusal raised here belongs to
        # this new request, not to the one before it (conn/downstream.py answers in turn).
        p = self._p
        version = p.get_http_version()
        if version not in ("1.1", "1.0"):
            raise ClientProtocolError(f"unsupported HTTP version {version}")
        method = p.get_method().decode("ascii")
        te: list[bytes] = []
        cl: list[bytes] = []
        hosts: list[bytes] = []
        conn: list[bytes] = []
        expect = False
        upgrade: bytes | None = None
        via: bytes | None = None
        for name, value in self._headers:
            n = name.lower()
            if n not in _REQUEST_FIELDS:
                continue  # one set lookup for the usual field, not seven comparisons
            if n == b"via":
                via = value if via is None else via + b", " + value
            elif n == b"upgrade":
                # Every Upgrade line counts: the router filters the joined list.
                upgrade = value if upgrade is None else upgrade + b", " + value
            elif n == b"host":
                hosts.append(value)
            elif n == b"content-length":
                cl.append(value)
            elif n == b"transfer-encoding":
                te.append(value)
            elif n == b"connection" or n == b"proxy-connection":
                conn.append(value)
            elif n == b"expect":
                if value.strip().lower() == b"100-continue":
                    expect = True
                else:
                    raise ClientProtocolError("unsupported Expect")
        if len(hosts) > 1:
            raise ClientProtocolError("more than one Host header")
        host = hosts[0].strip() if hosts else None
        if host is None:
            if version == "1.1":
                raise ClientProtocolError("missing Host header")
        elif host.find(b"@") >= 0 or host.find(b"..") >= 0 or host.translate(None, _VALID_HOST):
            # ".." is an empty label: "host.." must not slip past rules and routes for "host"
            raise ClientProtocolError("invalid Host header")
        framing, length = request_framing(version, te, cl)
        tokens = connection_tokens(conn) if conn else frozenset()
        if version == "1.1":
            keep_alive = b"close" not in tokens
        else:
            keep_alive = b"keep-alive" in tokens
        headers, self._headers = self._headers, []  # trailers must not join the head
        self._remaining = length if framing is F_LENGTH and length > 0 else -1
        if (framing is F_CHUNKED or self._remaining > 0) and method != "CONNECT" and p.should_upgrade():
            self._up_framing = (framing, length)  # llhttp will skip this body: see `feed`
        if upgrade is not None and (b"upgrade" not in tokens or version != "1.1" or method == "CONNECT"):
            upgrade = None
        self._in_head = False
        self._sink.on_request_head(
            RequestHead(
                method, self._url, version, headers, framing, length,
                keep_alive, host, tokens, expect, upgrade, via,
            )
        )

    def on_body(self, body: bytes) -> None:
        if self._remaining > 0:
            self._remaining -= len(body)
        self._sink.on_request_body(body)

    def on_message_complete(self) -> None:
        self._remaining = -1
        if self._up_framing is None:  # else the body is still to come (UpgradeBody ends it)
            self._sink.on_request_end()


class ResponseParser:
    """Parses responses on one upstream connection, strictly (RFC 9112 6.3).

    The caller sets `request_method` before each response so that a HEAD
    response is known to carry no body (llhttp cannot be told; see `feed`).
    """

    __slots__ = (
        "_sink", "_p", "_headers", "_reason", "_head_bytes", "_in_head",
        "_max_header", "_max_headers", "request_method", "_skip_rest", "_body_framing",
        "_partial", "_remaining", "_bypass",
    )

    def __init__(self, sink: ResponseSink, max_header_size: int, max_headers: int):
        self._sink = sink
        self._p = httptools.HttpResponseParser(self)
        self._headers: Headers = []
        self._reason = b""
        self._head_bytes = 0
        self._partial = 0
        self._in_head = False
        self._max_header = max_header_size
        self._max_headers = max_headers
        self.request_method = "GET"
        self._skip_rest = False
        self._body_framing: Framing | None = None  # set while a final response's body runs
        self._remaining = -1  # Content-Length bytes still due (bypass as in RequestParser)
        self._bypass = False

    @property
    def in_head(self) -> bool:
        return self._in_head

    def feed(self, data: bytes) -> int | None:
        """Returns the offset where a 101's tunnel bytes start, else None."""
        if self._skip_rest:
            raise UpstreamProtocolError("data after a HEAD response")
        if self._bypass:
            n = self._remaining
            if len(data) < n:
                self._remaining = n - len(data)
                self._sink.on_response_body(data)
                return None
            self._bypass = False
            self._remaining = -1
            self._body_framing = None
            self._p = httptools.HttpResponseParser(self)
            self._sink.on_response_body(data if len(data) == n else data[:n])
            self._sink.on_response_end()
            if len(data) > n:
                return self.feed(data[n:])
            return None
        try:
            self._p.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            ctx = exc.__context__
            if isinstance(ctx, _HeadDone):
                return None
            if isinstance(ctx, FerrymanError):
                raise ctx from None
            raise UpstreamProtocolError(f"invalid response: {exc}") from None
        except httptools.HttpParserUpgrade as up:
            # Only reached when the sink accepted the 101 (it raises otherwise).
            return int(up.args[0])
        except httptools.HttpParserError as exc:
            raise UpstreamProtocolError(f"invalid response: {exc}") from None
        if self._in_head:
            self._partial += len(data)
            if self._partial > self._max_header:
                raise UpstreamProtocolError("response header section too large")
        elif self._remaining > 0:
            self._bypass = True
        return None

    def finish(self) -> None:
        """The upstream sent EOF: end a close-delimited body, or report truncation."""
        framing = self._body_framing
        if framing is F_CLOSE:
            self._body_framing = None
            self._sink.on_response_end()
        elif framing is not None:
            raise UpstreamClosed("upstream closed the connection in the middle of the body")
        elif self._in_head:
            raise UpstreamProtocolError("upstream closed the connection in the response head")

    def on_message_begin(self) -> None:
        self._in_head = True
        self._headers = []
        self._reason = b""
        self._head_bytes = 0
        self._partial = 0

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._partial = 0
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._max_header:
            raise UpstreamProtocolError("response header section too large")
        self._headers.append((name, value))
        if len(self._headers) > self._max_headers:
            raise UpstreamProtocolError("too many response header fields")

    def on_headers_complete(self) -> None:
        self._in_head = False
        p = self._p
        version = p.get_http_version()
        if version not in ("1.1", "1.0"):
            raise UpstreamProtocolError(f"unsupported HTTP version {version}")
        status = p.get_status_code()
        te: list[bytes] = []
        cl: list[bytes] = []
        conn: list[bytes] = []
        for name, value in self._headers:
            n = name.lower()
            if n not in _FRAMING_FIELDS:
                continue
            if n == b"content-length":
                cl.append(value)
            elif n == b"transfer-encoding":
                te.append(value)
            elif n == b"connection":
                conn.append(value)
        if te and version == "1.0":
            # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty.
            raise UpstreamProtocolError("Transfer-Encoding in an HTTP/1.0 response")
        framing, length = response_framing(status, self.request_method, te, cl)
        tokens = connection_tokens(conn) if conn else frozenset()
        keep_alive = (b"close" not in tokens) if version == "1.1" else (b"keep-alive" in tokens)
        if framing is F_CLOSE or (self.request_method == "HEAD" and status >= 200):
            keep_alive = False
        headers, self._headers = self._headers, []  # trailers must not join the head
        head = ResponseHead(
            status, self._reason, version, headers, framing, length, keep_alive, tokens
        )
        if status >= 200:
            self._body_framing = framing
            if framing is F_LENGTH and length > 0 and self.request_method != "HEAD":
                self._remaining = length
        self._sink.on_response_head(head)
        if self.request_method == "HEAD" and status >= 200:
            # llhttp would wait for a body that a HEAD response never has; end the
            # message here and refuse further bytes (the connection is not reused).
            self._skip_rest = True
            self._body_framing = None
            self._sink.on_response_end()
            raise _HeadDone()

    def on_body(self, body: bytes) -> None:
        if self._remaining > 0:
            self._remaining -= len(body)
        self._sink.on_response_body(body)

    def on_message_complete(self) -> None:
        self._remaining = -1
        if not self._skip_rest:
            self._body_framing = None
            self._sink.on_response_end()


class _HeadDone(Exception):
    """Internal: stops llhttp after a HEAD response's header section."""
