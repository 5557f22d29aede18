"""Value objects the HTTP/1 parsers hand to the engine."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

Headers = list[tuple[bytes, bytes]]


class Framing(IntEnum):
    """How a message body is delimited (RFC 9112 section 6)."""

    NONE = 0
    LENGTH = 1
    CHUNKED = 2
    CLOSE = 3  # responses only: read until the connection closes


# The members as module names, for per-request code: on Python 3.11 `Framing.LENGTH` is
# read through EnumType.__getattr__'s slow hook (a call of type.__getattribute__, some
# 800 instructions), a module name for a few dozen.
F_NONE, F_LENGTH, F_CHUNKED, F_CLOSE = Framing.NONE, Framing.LENGTH, Framing.CHUNKED, Framing.CLOSE


@dataclass(slots=True)
class RequestHead:
    method: str
    target: bytes
    version: str  # "1.0" or "1.1"
    headers: Headers  # as received, original case
    framing: Framing
    content_length: int
    keep_alive: bool
    host: bytes | None  # the single Host value (None when absent, HTTP/1.0)
    connection_tokens: frozenset[bytes]  # lower-cased tokens of Connection (+Proxy-Connection)
    expect_continue: bool
    upgrade: bytes | None = None  # the Upgrade lines, comma-joined, when Connection lists "upgrade"
    via: bytes | None = None  # the Via lines, comma-joined (loop detection reads them)


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: bytes
    version: str
    headers: Headers
    framing: Framing
    content_length: int
    keep_alive: bool
    connection_tokens: frozenset[bytes]
