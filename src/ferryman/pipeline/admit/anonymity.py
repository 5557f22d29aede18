"""What the origin learns about the client: ``forward.anonymity`` (pure).

==========================  ===========================  ==============  =====================
field at the origin         transparent                  anonymous       elite
==========================  ===========================  ==============  =====================
Via                         client's + ours              client's + ours none (client's too)
X-Forwarded-For             client's + client address    client's        none (client's too)
Forwarded                   client's + ``for=`` client   client's        none (client's too)
X-Real-IP                   client's                     client's        none (client's too)
identifying fields [#]_     client's                     client's        none
==========================  ===========================  ==============  =====================

.. [#] configurable, default ``From``, ``X-Client-IP``, ``Client-IP``, ``True-Client-IP``.

`apply` works on the output of the header rewriter
(`http1.headers.forward_request_headers`), ferryman's Via included.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from ferryman.http1.events import Headers

Level = Literal["transparent", "anonymous", "elite"]
LEVELS: tuple[Level, ...] = ("transparent", "anonymous", "elite")

DEFAULT_IDENTIFYING: tuple[str, ...] = ("From", "X-Client-IP", "Client-IP", "True-Client-IP")
# What elite always removes: every field that tells a proxy is in the path or who is behind it.
ELITE_STRIP = frozenset({b"via", b"x-forwarded-for", b"forwarded", b"x-real-ip"})


@dataclass(frozen=True, slots=True)
class AnonymityPolicy:
    level: Level
    strip: frozenset[bytes]  # lower-case names removed from the request
    add_client: bool  # append the client address to X-Forwarded-For and Forwarded
    # the lengths of the stripped names: a field of another length is kept unlowered
    sizes: frozenset[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", frozenset(len(n) for n in self.strip))

    @classmethod
    def compile(cls, level: str, identifying: Iterable[str] = DEFAULT_IDENTIFYING) -> AnonymityPolicy:
        """Raises ValueError for an unknown level or a field name that is not a token."""
        if level not in LEVELS:
            raise ValueError(f"expected one of {', '.join(LEVELS)}, got {level!r}")
        names = set()
        for name in identifying:
            if not name or any(c in name for c in " \t:\r\n") or not name.isascii():
                raise ValueError(f"not a header field name: {name!r}")
            names.add(name.lower().encode("ascii"))
        if level == "transparent":
            return cls("transparent", frozenset(), True)
        if level == "anonymous":
            return cls("anonymous", frozenset(), False)
        return cls("elite", ELITE_STRIP | names, False)

    def apply(self, headers: Headers, client_ip: str) -> Headers:
        """The request fields to send on: ``headers`` (already without hop-by-hop fields)
        less what this level strips, plus what it adds.  Returns ``headers`` itself when
        nothing changes."""
        if self.add_client:
            return _add_client(headers, client_ip)
        strip = self.strip
        if not strip:
            return headers
        sizes = self.sizes
        for n, _ in headers:
            if len(n) in sizes and n.lower() in strip:  # something to strip: one copy
                return [f for f in headers if len(f[0]) not in sizes or f[0].lower() not in strip]
        return headers


def forwarded_for(client_ip: str) -> bytes:
    """RFC 7239 ``for=`` element: IPv6 addresses are bracketed and quoted."""
    if ":" in client_ip:
        return b'for="[' + client_ip.encode("ascii") + b']"'
    return b"for=" + client_ip.encode("ascii")


def _add_client(headers: Headers, client_ip: str) -> Headers:
    xff: list[bytes] = []
    fwd: list[bytes] = []
    out: Headers = []
    for name, value in headers:
        n = name.lower()
        if n == b"x-forwarded-for":
            xff.append(value.strip())
        elif n == b"forwarded":
            fwd.append(value.strip())
        else:
            out.append((name, value))
    ip = client_ip.encode("ascii")
    xff.append(ip)
    fwd.append(forwarded_for(client_ip))
    out.append((b"X-Forwarded-For", b", ".join(v for v in xff if v)))
    out.append((b"Forwarded", b", ".join(v for v in fwd if v)))
    return out
