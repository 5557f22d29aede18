"""Header rewriting for the next hop (pure): RFC 9110 7.6.1 hop-by-hop removal, Via.

Both directions drop the fixed hop-by-hop set plus whatever the Connection
field lists, and ferryman re-frames every body itself, so Content-Length and
Transfer-Encoding are always written by `serialize.py`, never copied.

Upgrade is passed on only for the protocols of an allow-list (`upgrade_offer`);
``h2c`` never (a backend that switches to cleartext HTTP/2 behind the proxy
would take every later request on that connection past routing and access
control: "h2c smuggling"), and ``HTTP2-Settings`` is always dropped.
"""

from __future__ import annotations

from ferryman.http1.events import Headers

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"content-length",  # re-emitted from the parsed framing
        b"expect",  # ferryman answers 100-continue itself
    }
)

# Never passed on, whatever the allow-list says.
NEVER_UPGRADE = frozenset({b"h2c"})

# Fields that must not be forwarded but are not listed above for one direction.
_REQUEST_DROP = HOP_BY_HOP | {b"host", b"http2-settings"}


def upgrade_offer(value: bytes, allowed: frozenset[bytes]) -> bytes | None:
    """The protocols of a client's Upgrade field that may be passed on, or None if none may.

    ``value`` is the comma-joined Upgrade field; each entry is ``name[/version]`` and is
    kept when its name (case-insensitive) is in ``allowed`` and is not ``h2c``.
    """
    kept = []
    for part in value.split(b","):
        proto = part.strip()
        name = proto.partition(b"/")[0].rstrip().lower()
        if name in allowed and name not in NEVER_UPGRADE:
            kept.append(proto)
    return b", ".join(kept) if kept else None


def forward_request_headers(
    headers: Headers,
    connection_tokens: frozenset[bytes],
    via: bytes | None,
    upgrade: bytes | None = None,
    version: str = "1.1",
) -> tuple[Headers, bool]:
    """Headers to send upstream, and whether the client's Via showed our own token.

    ``upgrade`` is the allowed part of the client's Upgrade field (`upgrade_offer`):
    it is sent as the one Upgrade field with ``Connection: upgrade``, the hop-by-hop
    pair a proxy must pass on to tunnel WebSocket. Without it neither is sent.
    """
    out: Headers = []
    if upgrade is not None:
        out.append((b"Upgrade", upgrade))
        out.append((b"Connection", b"upgrade"))
    via_seen = False
    drop = _REQUEST_DROP if connection_tokens <= _REQUEST_DROP else _REQUEST_DROP | connection_tokens
    via_values: list[bytes] = []
    for name, value in headers:
        n = name.lower()
        if n in drop:
            continue
        if n == b"via":
            via_values.append(value)
            continue
        out.append((name, value))
    if via is not None:
        if via_values:
            token = via_token(via)
            for v in via_values:
                if via_names(v, token):
                    via_seen = True
        via_values.append(_received(via, version))
    if via_values:
        out.append((b"Via", b", ".join(via_values)))
    return out, via_seen


def via_token(via: bytes) -> bytes:
    """The received-by name of our own Via entry (``1.1 ferryman`` -> ``ferryman``)."""
    return via.split(b" ", 2)[1] if b" " in via else via


def via_names(value: bytes, token: bytes) -> bool:
    """Does a (comma-joined) Via value hold an entry received by ``token``: our own?"""
    for part in value.split(b","):
        fields = part.strip().split()
        if len(fields) >= 2 and fields[1] == token:
            return True
    return False


def _received(via: bytes, version: str) -> bytes:
    """RFC 9110 7.6.3: Via names the protocol version of the message as received."""
    if version == "1.1" or not via.startswith(b"1.1 "):
        return via
    return version.encode("ascii") + via[3:]


def forward_response_headers(
    headers: Headers, connection_tokens: frozenset[bytes], via: bytes | None, version: str = "1.1"
) -> Headers:
    # (no new set when the tokens name hop-by-hop fields anyway: "keep-alive", "upgrade")
    drop = HOP_BY_HOP if connection_tokens <= HOP_BY_HOP else HOP_BY_HOP | connection_tokens
    out: Headers = []
    via_values: list[bytes] = []
    for name, value in headers:
        n = name.lower()
        if n in drop:
            continue
        if n == b"via":
            via_values.append(value)
            continue
        out.append((name, value))
    if via is not None:
        via_values.append(_received(via, version))
    if via_values:
        out.append((b"Via", b", ".join(via_values)))
    return out
