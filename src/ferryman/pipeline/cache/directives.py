"""Cache-Control directives (pure): RFC 9111 5.2 field values in, a frozen `CacheControl` out.

``policy.py`` decides with the parsed value; this module only reads the syntax.

Rules this module owns
----------------------
===================  ==========================================================================
rule                 behaviour
===================  ==========================================================================
never raises         bad input is ignored or read in its stricter form
delta-seconds        digits only; above 2**31 become 2**31 (1.2.2)
max-age / s-maxage   malformed or conflicting: 0 (stale) rather than dropped (4.2.1), so that
                     Expires or a heuristic cannot keep fresh what the origin meant to limit
repeated directive   the most restrictive value wins (min, or max for min-fresh)
no-cache / private   a bare, empty or malformed argument means the unqualified, stricter form
no-store, must-      restrictive: honoured even with a stray argument
revalidate, ...
public, must-        permissive: only in their exact form (no argument)
understand
Pragma (5.4)         ``Pragma: no-cache`` counts as request no-cache only without Cache-Control
targeted (RFC 9213)  the first valid, non-empty targeted field of the route's list replaces
                     Cache-Control for the response (``targeted.py`` reads its syntax)
===================  ==========================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ferryman.http1.events import Headers
from ferryman.http1.framing import header_values
from ferryman.pipeline.cache.key import split_list, unquote
from ferryman.pipeline.cache.targeted import targeted_directives

DELTA_MAX = 2**31  # RFC 9111 1.2.2: the largest delta-seconds a cache must represent
_NONE: frozenset[bytes] = frozenset()  # shared: an empty frozenset per stored entry costs 216 B


@dataclass(frozen=True, slots=True)
class CacheControl:
    """Parsed Cache-Control of a request or a response (RFC 9111 5.2); absent values are None.

    ``no_cache`` / ``private`` are the unqualified forms; the qualified forms only fill
    ``no_cache_fields`` / ``private_fields`` (lower-cased field names).
    """

    no_store: bool = False
    no_cache: bool = False
    no_cache_fields: frozenset[bytes] = frozenset()
    private: bool = False
    private_fields: frozenset[bytes] = frozenset()
    public: bool = False
    must_revalidate: bool = False
    proxy_revalidate: bool = False
    must_understand: bool = False
    only_if_cached: bool = False
    max_age: int | None = None
    s_maxage: int | None = None
    max_stale: float | None = None  # math.inf for a bare max-stale
    min_fresh: int | None = None
    stale_while_revalidate: int | None = None
    stale_if_error: int | None = None


def parse_cache_control(values: Iterable[bytes]) -> CacheControl:
    """Parse every Cache-Control field line of a message; never raises (RFC 9111 5.2, 4.2.1)."""
    flags: set[bytes] = set()
    nums: dict[bytes, float] = {}
    lists: dict[bytes, set[bytes]] = {}
    for value in values:
        for member in split_list(value):
            raw_name, eq, raw_arg = member.partition(b"=")
            name = raw_name.strip().lower()
            if not name:
                continue
            arg = unquote(raw_arg.strip()) if eq else None
            if name in (b"no-cache", b"private"):
                names = _field_names(arg) if eq else None
                if names:
                    lists.setdefault(name, set()).update(names)
                else:  # bare, empty or malformed argument: the unqualified, stricter form
                    flags.add(name)
            elif name in (b"no-store", b"must-revalidate", b"proxy-revalidate", b"only-if-cached"):
                flags.add(name)  # restrictive: honoured even with a stray argument
            elif name in (b"public", b"must-understand"):
                if not eq:  # permissive: only in its exact form
                    flags.add(name)
            elif name in (b"max-age", b"s-maxage"):
                d = delta_seconds(arg)
                _keep(nums, name, 0 if d is None else d, min)  # invalid freshness -> stale (4.2.1)
            elif name == b"max-stale":
                stale = math.inf if not eq else delta_seconds(arg)
                if stale is not None:
                    _keep(nums, name, stale, min)
            elif name in (b"min-fresh", b"stale-while-revalidate", b"stale-if-error"):
                d = delta_seconds(arg)
                if d is not None:
                    _keep(nums, name, d, max if name == b"min-fresh" else min)

    def num(key: bytes) -> int | None:
        v = nums.get(key)
        return None if v is None else int(v)

    return CacheControl(
        no_store=b"no-store" in flags,
        no_cache=b"no-cache" in flags,
        no_cache_fields=frozenset(lists[b"no-cache"]) if b"no-cache" in lists else _NONE,
        private=b"private" in flags,
        private_fields=frozenset(lists[b"private"]) if b"private" in lists else _NONE,
        public=b"public" in flags,
        must_revalidate=b"must-revalidate" in flags,
        proxy_revalidate=b"proxy-revalidate" in flags,
        must_understand=b"must-understand" in flags,
        only_if_cached=b"only-if-cached" in flags,
        max_age=num(b"max-age"),
        s_maxage=num(b"s-maxage"),
        max_stale=nums.get(b"max-stale"),
        min_fresh=num(b"min-fresh"),
        stale_while_revalidate=num(b"stale-while-revalidate"),
        stale_if_error=num(b"stale-if-error"),
    )


def request_cache_control(req_headers: Headers) -> CacheControl:
    """A request's directives; ``Pragma: no-cache`` counts as no-cache only without Cache-Control (5.4)."""
    values = header_values(req_headers, b"cache-control")
    if values:
        return parse_cache_control(values)
    for value in header_values(req_headers, b"pragma"):
        if any(p.strip().lower() == b"no-cache" for p in value.split(b",")):
            return _PRAGMA_NO_CACHE
    return _NO_DIRECTIVES


_NO_DIRECTIVES = CacheControl()
_PRAGMA_NO_CACHE = CacheControl(no_cache=True)


def response_cache_control(
    resp_headers: Headers, targets: tuple[bytes, ...] = ()
) -> tuple[CacheControl, bool]:
    """A response's directives for this cache, and whether they came from a targeted field
    (RFC 9213 2.2: then Cache-Control and Expires are ignored); ``targets`` as `Rules.targets`."""
    if targets:
        targeted = targeted_directives(resp_headers, targets)
        if targeted is not None:
            return parse_cache_control((targeted,)), True
    return parse_cache_control(header_values(resp_headers, b"cache-control")), False


# -- helpers -----------------------------------------------------------------------------------


def delta_seconds(arg: bytes | None) -> int | None:
    """A delta-seconds value (1.2.2), clamped to `DELTA_MAX`; None unless all digits."""
    if not arg or not arg.isdigit():
        return None
    return DELTA_MAX if len(arg) > 10 else min(int(arg), DELTA_MAX)


def _keep(nums: dict[bytes, float], key: bytes, value: float, pick: Callable[[float, float], float]) -> None:
    old = nums.get(key)
    nums[key] = value if old is None else pick(old, value)


def _field_names(arg: bytes | None) -> set[bytes]:
    if arg is None:
        return set()
    return {n for n in (p.strip().lower() for p in arg.split(b",")) if n}
