"""The reverse proxy's request-path normal form (pure): what is matched is what is forwarded.

A route that guards ``/admin`` is only as good as the agreement between the
path ferryman matched and the path the backend acts on.  Backends disagree on
``//admin``, ``/x/..%2fadmin``, ``/admin;x`` or ``/admin%00``, so ferryman
(as Envoy does) rewrites the path once, into one normal form, routes on it and
sends exactly that upstream.  Steps, in order (the README has the table):

1. ``%XX`` escapes: an invalid one (``%zz``, ``%4``) -> 400; a control
   character (``%00``-``%1F``, ``%7F``) -> 400; an encoded slash or backslash
   (``%2F``, ``%5C``) -> by ``escaped_slashes``: ``reject`` (400, the default),
   ``keep`` (left encoded, upper-case: one opaque segment character) or
   ``decode`` (turned into ``/``); an unreserved character (``%61``) ->
   decoded; any other escape -> kept, hex upper-cased.
2. A backslash -> ``/`` (browsers and Windows servers treat it as one).
3. ``merge_slashes`` (on by default): runs of ``/`` -> one ``/``.
4. RFC 3986 5.2.4 dot-segment removal (``/a/./b/../c`` -> ``/a/c``); ``..``
   never climbs above the root.

The query is not part of the path and is never touched.  Raw control bytes never
get here: the HTTP parser refuses them.  A path that holds none of ``%``, ``\\``,
``//`` and ``/.`` is already in normal form and is returned as is (the usual
case: four scans in C, no allocation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ferryman.errors import ClientProtocolError

ESCAPED_SLASHES = ("reject", "keep", "decode")

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(rb"%(..?)|%$", re.DOTALL)
_HEX = frozenset(b"0123456789abcdefABCDEF")
_SLASHES = re.compile(rb"//+")


@dataclass(frozen=True, slots=True)
class PathPolicy:
    merge_slashes: bool = True
    escaped_slashes: str = "reject"  # reject | keep | decode

    def __post_init__(self) -> None:
        if self.escaped_slashes not in ESCAPED_SLASHES:
            raise ValueError(f"escaped_slashes must be one of {', '.join(ESCAPED_SLASHES)}")


DEFAULT_POLICY = PathPolicy()


def normalize(path: bytes, policy: PathPolicy = DEFAULT_POLICY) -> bytes:
    """The normal form of an origin-form path (no query); raises ClientProtocolError (400)."""
    # ``find``, not ``in``: on bytes, ``in`` first tries its operand as an int and raises
    # and clears a TypeError, five times slower; this test runs on every request.
    if path.find(b"%") < 0 and path.find(b"\\") < 0 and path.find(b"//") < 0 and path.find(b"/.") < 0:
        return path
    if not path.startswith(b"/"):
        return path
    if b"%" in path:
        path = _ESCAPE.sub(_Unescape(policy.escaped_slashes), path)
    if b"\\" in path:
        path = path.replace(b"\\", b"/")
    if policy.merge_slashes and b"//" in path:
        path = _SLASHES.sub(b"/", path)
    if b"/." in path:
        path = remove_dot_segments(path)
    return path


class _Unescape:
    __slots__ = ("slashes",)

    def __init__(self, slashes: str) -> None:
        self.slashes = slashes

    def __call__(self, m: re.Match[bytes]) -> bytes:
        hx = m.group(1)
        if hx is None or len(hx) != 2 or hx[0] not in _HEX or hx[1] not in _HEX:
            raise ClientProtocolError("invalid percent-escape in the request path")
        byte = int(hx, 16)
        if byte < 0x20 or byte == 0x7F:
            raise ClientProtocolError(f"control character %{hx.upper().decode()} in the request path")
        if byte in _UNRESERVED:
            return bytes((byte,))
        if byte == 0x2F or byte == 0x5C:
            if self.slashes == "reject":
                raise ClientProtocolError(
                    f"encoded slash %{hx.upper().decode()} in the request path (reverse.escaped_slashes)"
                )
            if self.slashes == "decode":
                return b"/"
        return b"%" + hx.upper()


def remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 5.2.4 on an absolute path: ``.`` dropped, ``..`` removes the segment before it."""
    segments = path.split(b"/")[1:]
    out: list[bytes] = []
    last = len(segments) - 1
    for i, seg in enumerate(segments):
        if seg == b"." or seg == b"..":
            if seg == b".." and out:
                out.pop()
            if i == last:
                out.append(b"")  # "/a/b/.." -> "/a/": the result names a directory
            continue
        out.append(seg)
    return b"/" + b"/".join(out)


def strip_matrix(path: str) -> str:
    """``/a;x=1/b;y`` -> ``/a/b``: what a servlet container routes on (matching only)."""
    if ";" not in path:
        return path
    return "/".join(seg.partition(";")[0] for seg in path.split("/"))
