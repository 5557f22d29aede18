"""RFC 9213 targeted cache control (pure): a targeted field read as Cache-Control directives.

A targeted field (``CDN-Cache-Control``, or ferryman's own, e.g. ``Ferryman-Cache-Control``)
has the semantics of Cache-Control but the syntax of a Structured Field Dictionary
(RFC 8941 3.2), parsed here with ``http_sf``.  ``as_cache_control`` turns a valid, non-empty
one into the equivalent Cache-Control value, so that ``directives.parse_cache_control`` gives the
directives the same meaning and precedence in both (RFC 9213 2.2: no-store and no-cache make
max-age inoperative, unknown extensions are ignored).

Rules this module owns
----------------------
====================  =========================================================================
rule                  behaviour
====================  =========================================================================
syntax (2.1)          the field lines joined with ``,`` form one Dictionary; a parse error or an
                      empty field means the field is ignored (``None``): the next field on the
                      target list, then Cache-Control and Expires, decide
values (2.1)          Boolean true -> the bare directive (``private``), false -> absent; an
                      Integer -> ``name=n``; a String -> a quoted argument (``no-cache="a, b"``);
                      a Token -> ``name=token``; a Decimal or any other type violates the
                      directive's constraints and is passed on as written, where the policy
                      reads an invalid ``max-age`` as stale (the safe side); parameters ignored
====================  =========================================================================
"""

from __future__ import annotations

from decimal import Decimal

import http_sf

from ferryman.http1.events import Headers
from ferryman.http1.framing import header_values


def as_cache_control(values: list[bytes]) -> bytes | None:
    """The Cache-Control value equivalent to a targeted field's lines; ``None`` when the field is
    empty or does not parse as a Dictionary (RFC 9213 2.1: such a field MUST be ignored)."""
    raw = b",".join(values)
    if not raw.strip(b" \t"):
        return None
    try:
        members = http_sf.parse(raw, tltype="dictionary")
    except Exception:  # noqa: BLE001 - any parse failure means "ignore this field"
        return None
    if not isinstance(members, dict) or not members:
        return None
    out: list[bytes] = []
    for name, member in members.items():
        value = member[0] if isinstance(member, tuple) else member
        directive = name.encode("ascii", "replace")
        if value is True:
            out.append(directive)
        elif value is False:
            continue
        elif isinstance(value, int):
            out.append(b"%s=%d" % (directive, value))
        elif isinstance(value, str):
            quoted = value.replace("\\", "\\\\").replace('"', '\\"').encode("ascii", "replace")
            out.append(b'%s="%s"' % (directive, quoted))
        elif isinstance(value, Decimal | http_sf.Token):
            out.append(directive + b"=" + str(value).encode("ascii", "replace"))
        else:  # a byte sequence, an inner list...: not a cache directive value
            out.append(directive + b"=?")
    return b", ".join(out) if out else None


def targeted_directives(headers: Headers, targets: tuple[bytes, ...]) -> bytes | None:
    """The first valid, non-empty field of ``targets`` (lower-case names, priority order) in a
    response, as a Cache-Control value; ``None`` when none is usable (RFC 9213 2.2)."""
    for name in targets:
        values = header_values(headers, name)
        if values:
            cc = as_cache_control(values)
            if cc is not None:
                return cc
    return None
