"""How ferryman frames what it sends (http1/outgoing.py): one table of cases."""

from __future__ import annotations

import pytest

from ferryman.http1 import outgoing
from ferryman.http1.outgoing import CHUNK, NONE, RAW

CL5 = b"Content-Length: 5\r\n"
CLOSE = b"Connection: close\r\n"
KA = b"Connection: keep-alive\r\n"
TE = b"Transfer-Encoding: chunked\r\n"


@pytest.mark.parametrize(
    ("version", "has_body", "length", "keep", "expect"),
    [
        ("1.1", True, 5, True, (RAW, CL5, True)),
        ("1.1", True, None, True, (CHUNK, TE, True)),
        ("1.1", True, None, False, (CHUNK, TE + CLOSE, False)),
        ("1.0", True, None, True, (RAW, CLOSE, False)),  # HTTP/1.0: until close, never chunked
        ("1.0", True, 5, True, (RAW, CL5 + KA, True)),
        ("1.1", False, 5, True, (NONE, CL5, True)),  # HEAD / 304: the length as metadata
        ("1.1", False, None, True, (NONE, b"", True)),
        ("1.1", True, 0, False, (RAW, b"Content-Length: 0\r\n" + CLOSE, False)),
    ],
)
def test_response_framing(
    version: str, has_body: bool, length: int | None, keep: bool, expect: tuple[int, bytes, bool]
) -> None:
    assert outgoing.response(version, has_body, length, keep) == expect


def test_frame() -> None:
    assert outgoing.frame(CHUNK, b"x" * 255) == (b"ff\r\n", b"x" * 255, b"\r\n")
    assert outgoing.frame(RAW, b"abc") == (b"abc",)
    assert outgoing.frame(NONE, b"abc") == ()
