"""RFC 9111 shared-cache policy (pure): what may be stored, for how long, and what may be reused.

Values in, decisions out: header lists, statuses and times (epoch seconds, ``now`` passed
in) become frozen values.  The engine calls ``storable`` + ``make_entry`` on a response,
``lookup`` on each request, and carries out the ``Lookup`` it gets back.  Which stored
response a message is about (keys, Vary, validators, invalidation) and HTTP dates live in
``key.py``.

Rules this module owns
----------------------
==================  ===========================================================================
rule                behaviour
==================  ===========================================================================
store (3)           GET only, final status, not 206/304, no ``no-store`` in request or response
                    (``must-understand`` on an understood status overrides the response's),
                    no ``private`` (shared), ``Authorization`` only with public / s-maxage /
                    must-revalidate (3.5), not ``Vary: *``, and some use: explicit freshness
                    (max-age, s-maxage, Expires), a route default TTL, or a heuristic status
                    (or public) with a validator (ETag, Last-Modified) or stale-if-error; what
                    could never be served nor revalidated is not written at all
set-cookie          stored only with explicit freshness from the origin (max-age, s-maxage,
                    Expires) or the route's ``store_set_cookie``: never on heuristic freshness
                    nor on a default TTL, so one user's cookie is not replayed to the next
                    (``private="Set-Cookie"`` is fine: the field itself is never stored)
targeted (RFC 9213) with ``Rules.targets`` (e.g. ferryman's own field, then CDN-Cache-Control),
                    the first valid, non-empty targeted field present replaces Cache-Control
                    and Expires for every rule here (``targeted.py`` reads it)
lifetime (4.2.1)    s-maxage > max-age > Expires - Date > route default TTL > heuristic: 10% of
                    Date - Last-Modified (heuristic statuses or public), capped at
                    ``Rules.heuristic_max`` (one day unless configured)
age (4.2.3)         corrected initial age (Age + response delay vs apparent age) + resident time;
                    of several Age values only the first counts (5.1)
reuse (4)           fresh when lifetime > age; request no-cache / Pragma (5.4), max-age,
                    min-fresh and response no-cache force validation; stale entries are
                    served only within stale-while-revalidate (RFC 5861, with a background
                    refresh) or the request's max-stale, never under must-revalidate,
                    proxy-revalidate or s-maxage (shared), nor under response no-cache
only-if-cached      whatever would go to the origin becomes ``ONLY_IF_CACHED_MISS`` (504)
request no-store    the response is not stored; a stored one may still answer (5.2.1.5
                    forbids storing, not reuse)
stale-if-error      on 500/502/503/504 or no answer, a stale entry within the response's or
                    request's window may be served (RFC 5861 4), unless the entry forbids stale
==================  ===========================================================================

Bad input never raises.  How malformed, repeated or oversized Cache-Control directives
read is ``directives.py``'s (a bad ``max-age`` makes the response stale; in a request it
reads as ``max-age=0``, validate).  An Expires that is not exactly an HTTP-date
(``http_date_strict``), or conflicting Expires lines, mean already expired (5.3).
``Rules.ignore_origin`` is the operator's override: the origin's Cache-Control and Expires
are ignored and the route's TTL table decides, except that a request with Authorization
still needs ``public``, and Set-Cookie follows the same rule as on the normal path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from ferryman.http1.events import Headers
from ferryman.http1.framing import header_values
from ferryman.pipeline.cache.directives import (
    DELTA_MAX,
    CacheControl,
    delta_seconds,
    request_cache_control,
    response_cache_control,
)

# the ``x as x`` names are re-exported: the engine imports the whole cache phase from here
from ferryman.pipeline.cache.key import SAFE_METHODS as SAFE_METHODS
from ferryman.pipeline.cache.key import SecondaryKey as SecondaryKey
from ferryman.pipeline.cache.key import client_conditional_304 as client_conditional_304
from ferryman.pipeline.cache.key import conditional_headers as conditional_headers
from ferryman.pipeline.cache.key import format_http_date as format_http_date
from ferryman.pipeline.cache.key import http_date as http_date
from ferryman.pipeline.cache.key import http_date_strict, secondary_key, vary_fields
from ferryman.pipeline.cache.key import invalidations as invalidations
from ferryman.pipeline.cache.key import not_modified_headers as not_modified_headers
from ferryman.pipeline.cache.key import update_from_304 as update_from_304
from ferryman.pipeline.cache.key import validation_headers as validation_headers

# RFC 9110 15.1: statuses whose responses may get heuristic freshness
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
# statuses whose caching rules ferryman implements (must-understand, 5.2.2.3); no 206: partial
# content is never stored
UNDERSTOOD_STATUSES = frozenset({200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501})
ERROR_STATUSES = frozenset({500, 502, 503, 504})  # RFC 5861 4: what stale-if-error covers


@dataclass(frozen=True, slots=True)
class Rules:
    """Per-route policy, built once per Plan: what the engine passes to every call."""

    shared: bool = True
    heuristic_statuses: frozenset[int] = HEURISTIC_STATUSES
    default_ttls: Mapping[int, float] = field(default_factory=dict)  # status -> TTL if the origin gives none
    ignore_origin: bool = False
    heuristic_fraction: float = 0.1  # of Date - Last-Modified (4.2.2)
    heuristic_max: float = 86400.0  # cap of a heuristic lifetime (cache.heuristic_max)
    store_set_cookie: bool = False  # the route lets Set-Cookie responses be stored on any freshness
    # RFC 9213 target list: lower-case targeted field names, most applicable first; the first
    # valid, non-empty one present replaces Cache-Control and Expires for the response
    targets: tuple[bytes, ...] = ()
    # lower-case fields never passed downstream from this cache (e.g. its own targeted field)
    hidden: frozenset[bytes] = frozenset()
    # what answering from a stored response drops: the stored Age (ours replaces it, 4.2.3) + hidden
    serve_drop: frozenset[bytes] = field(init=False, default=frozenset())

    def __post_init__(self) -> None:
        # a private read-only copy: the caller's dict can change, a Plan's rules cannot
        object.__setattr__(self, "default_ttls", MappingProxyType(dict(self.default_ttls)))
        object.__setattr__(self, "serve_drop", frozenset({b"age"}) | self.hidden)


DEFAULT_RULES = Rules()


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a response may be stored; ``reason`` says why not, for the log and Cache-Status."""

    store: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.store


@dataclass(frozen=True, slots=True)
class Entry:
    """What lookup needs of a stored response, computed once when it is stored or freshened."""

    status: int
    headers: Headers  # as stored: private="..." fields already removed
    request_time: float
    response_time: float
    initial_age: float  # corrected_initial_age (4.2.3)
    lifetime: float  # freshness lifetime (4.2.1)
    vary_fields: tuple[bytes, ...] | None  # None: Vary: * (matches nothing)
    vary: SecondaryKey  # the storing request's values of vary_fields
    no_cache: bool = False  # unqualified response no-cache: validate every time
    no_cache_fields: frozenset[bytes] = frozenset()  # strip unless validated
    no_stale: bool = False  # must-revalidate, or proxy-revalidate / s-maxage in a shared cache
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0

    def age(self, now: float) -> float:
        return self.initial_age + max(0.0, now - self.response_time)


class Outcome(StrEnum):
    FRESH = "fresh"  # serve the entry
    STALE_OK = "stale-ok"  # serve the stale entry (refresh in the background if ``revalidate``)
    MUST_VALIDATE = "must-validate"  # forward with ``validation_headers``
    MISS = "miss"  # forward unchanged; consider storing the answer
    ONLY_IF_CACHED_MISS = "only-if-cached-miss"  # answer 504 (5.2.1.7)


# The outcomes as module names, read on every request: on Python 3.11 an Enum class's
# attribute (`Outcome.MISS`) goes through EnumType.__getattr__'s slow hook.
FRESH, STALE_OK, MUST_VALIDATE = Outcome.FRESH, Outcome.STALE_OK, Outcome.MUST_VALIDATE
MISS, ONLY_IF_CACHED_MISS = Outcome.MISS, Outcome.ONLY_IF_CACHED_MISS


@dataclass(frozen=True, slots=True)
class Lookup:
    """The cache phase's decision for one request."""

    outcome: Outcome
    entry: Entry | None = None  # the selected stored response, if any
    reason: str = ""  # the rule that decided, e.g. "max-stale", "vary-miss"
    fwd: str | None = None  # RFC 9211 ``fwd`` for Cache-Status; None when not forwarded
    age: float = 0.0
    ttl: float = 0.0  # lifetime - age: negative once stale (RFC 9211 ``ttl``)
    revalidate: bool = False  # stale-while-revalidate: refresh the entry in the background
    strip: frozenset[bytes] = frozenset()  # qualified no-cache fields to drop when serving


# -- Cache-Control -----------------------------------------------------------------------------


# -- storing, freshness, age -------------------------------------------------------------------


def storable(
    method: str, status: int, req_headers: Headers, resp_headers: Headers, rules: Rules = DEFAULT_RULES
) -> Verdict:
    """May this response be stored (RFC 9111 3)?  A falsy ``Verdict`` names the rule that said no.

    Only GET responses are stored: a HEAD response has no body to answer a GET with, and
    206 partial content is never stored (no range merging), nor a 304 (it only freshens).
    """
    if method != "GET":
        return Verdict(False, "method")
    if status < 200 or status in (206, 304):
        return Verdict(False, "status")
    if request_cache_control(req_headers).no_store:
        return Verdict(False, "request-no-store")
    cc, targeted = response_cache_control(resp_headers, rules.targets)
    if cc.must_understand and status not in UNDERSTOOD_STATUSES:
        return Verdict(False, "must-understand")
    if vary_fields(header_values(resp_headers, b"vary")) is None:
        return Verdict(False, "vary-star")
    auth = _has(req_headers, b"authorization")
    explicit = (
        cc.max_age is not None
        or (cc.s_maxage is not None and rules.shared)
        or (not targeted and _has(resp_headers, b"expires"))
    )
    if rules.ignore_origin:
        if auth and not cc.public:
            return Verdict(False, "authorization")
        if not _cookie_ok(cc, resp_headers, explicit, rules):
            return Verdict(False, "set-cookie")
        return Verdict(True) if status in rules.default_ttls else Verdict(False, "no-ttl")
    if cc.no_store and not (cc.must_understand and status in UNDERSTOOD_STATUSES):
        return Verdict(False, "no-store")
    if rules.shared and cc.private:
        return Verdict(False, "private")
    if rules.shared and auth and not (cc.public or cc.must_revalidate or cc.s_maxage is not None):
        return Verdict(False, "authorization")
    if not _cookie_ok(cc, resp_headers, explicit, rules):
        return Verdict(False, "set-cookie")
    if explicit or status in rules.default_ttls or (cc.private and not rules.shared):
        return Verdict(True)
    if (status in rules.heuristic_statuses or cc.public) and (
        _has(resp_headers, b"etag") or _has(resp_headers, b"last-modified") or cc.stale_if_error
    ):
        # heuristic freshness needs Last-Modified; without it only a validator (or an origin
        # failure) could ever make the entry useful: no validator, nothing worth writing
        return Verdict(True)
    return Verdict(False, "no-freshness")


def _cookie_ok(cc: CacheControl, resp_headers: Headers, explicit: bool, rules: Rules) -> bool:
    """May a response with Set-Cookie be stored?  Only on the origin's explicit freshness or the
    route's say-so; one whose Set-Cookie is ``private`` is stored without it anyway (5.2.2.7)."""
    if explicit or rules.store_set_cookie or not _has(resp_headers, b"set-cookie"):
        return True
    return rules.shared and b"set-cookie" in cc.private_fields


def freshness_lifetime(
    status: int,
    resp_headers: Headers,
    response_time: float,
    rules: Rules = DEFAULT_RULES,
    cc: CacheControl | None = None,
    targeted: bool = False,
) -> float:
    """Seconds a response stays fresh (RFC 9111 4.2.1, heuristics 4.2.2); ``response_time`` stands in
    for a missing or invalid Date.  ``cc`` (with ``targeted``: it came from a targeted field, so
    Expires does not count) saves a re-parse when the caller has it."""
    if rules.ignore_origin:
        return max(0.0, rules.default_ttls.get(status, 0.0))
    if cc is None:
        cc, targeted = response_cache_control(resp_headers, rules.targets)
    if rules.shared and cc.s_maxage is not None:
        return float(cc.s_maxage)
    if cc.max_age is not None:
        return float(cc.max_age)
    date = _date(resp_headers, b"date")
    if date is None:
        date = response_time
    expires = () if targeted else header_values(resp_headers, b"expires")
    if expires:
        t = http_date_strict(expires[0]) if len(set(expires)) == 1 else None
        return 0.0 if t is None else max(0.0, t - date)  # invalid / conflicting: already expired
    ttl = rules.default_ttls.get(status)
    if ttl is not None:
        return max(0.0, ttl)
    if status in rules.heuristic_statuses or cc.public:
        lm = _date(resp_headers, b"last-modified")
        if lm is not None and lm < date:
            return min((date - lm) * rules.heuristic_fraction, rules.heuristic_max)
    return 0.0


def current_age(resp_headers: Headers, request_time: float, response_time: float, now: float) -> float:
    """Seconds since the origin produced the response (RFC 9111 4.2.3)."""
    return _initial_age(resp_headers, request_time, response_time) + max(0.0, now - response_time)


def make_entry(
    status: int,
    req_headers: Headers,
    resp_headers: Headers,
    request_time: float,
    response_time: float,
    rules: Rules = DEFAULT_RULES,
) -> Entry:
    """The stored form of a response ``storable`` accepted; ``*_time`` bracket the exchange."""
    fields = vary_fields(header_values(resp_headers, b"vary"))
    vary = () if fields is None else secondary_key(fields, req_headers)
    return _entry(status, resp_headers, fields, vary, request_time, response_time, rules)


def _entry(
    status: int,
    headers: Headers,
    fields: tuple[bytes, ...] | None,
    vary: SecondaryKey,
    request_time: float,
    response_time: float,
    rules: Rules,
) -> Entry:
    cc, targeted = response_cache_control(headers, rules.targets)
    if rules.shared and cc.private_fields:  # 5.2.2.7: a shared cache must not store them
        headers = [(n, v) for n, v in headers if n.lower() not in cc.private_fields]
    lifetime = freshness_lifetime(status, headers, response_time, rules, cc, targeted)
    initial = _initial_age(headers, request_time, response_time)
    if rules.ignore_origin:  # the origin's directives are what the operator overrides
        return Entry(status, headers, request_time, response_time, initial, lifetime, fields, vary)
    return Entry(
        status,
        headers,
        request_time,
        response_time,
        initial,
        lifetime,
        fields,
        vary,
        no_cache=cc.no_cache,
        no_cache_fields=cc.no_cache_fields,
        no_stale=cc.must_revalidate or (rules.shared and (cc.proxy_revalidate or cc.s_maxage is not None)),
        stale_while_revalidate=float(cc.stale_while_revalidate or 0),
        stale_if_error=float(cc.stale_if_error or 0),
    )


# -- reuse -------------------------------------------------------------------------------------


def lookup(
    entries: Sequence[Entry], method: str, req_headers: Headers, now: float, rules: Rules = DEFAULT_RULES
) -> Lookup:
    """Decide how a request is answered from the entries stored under its key (RFC 9111 4).

    Among entries whose Vary selection matches, the most recently received wins (4.1).
    ``rules`` changes nothing today: what a route's Rules decide is baked into each Entry
    by ``make_entry``; it is accepted so that request-side route options need no new API.
    """
    cc = request_cache_control(req_headers)
    if method != "GET" and method != "HEAD":
        return Lookup(MISS, reason="method", fwd="method")
    entry = _select(entries, req_headers)
    if entry is None:
        fwd = "vary-miss" if entries else "uri-miss"
        if cc.only_if_cached:
            return Lookup(ONLY_IF_CACHED_MISS, reason=fwd)
        return Lookup(MISS, reason=fwd, fwd=fwd)
    age = entry.age(now)
    ttl = entry.lifetime - age
    fresh = ttl > 0

    def validate(reason: str, by_request: bool) -> Lookup:
        if cc.only_if_cached:
            return Lookup(ONLY_IF_CACHED_MISS, entry, reason, None, age, ttl)
        fwd = "request" if by_request and fresh else "stale"
        return Lookup(MUST_VALIDATE, entry, reason, fwd, age, ttl)

    if entry.no_cache:
        return validate("no-cache", False)
    if cc.no_cache:
        return validate("request-no-cache", True)
    if cc.max_age is not None and age > cc.max_age:
        return validate("max-age", True)
    if cc.min_fresh is not None and ttl < cc.min_fresh:
        return validate("min-fresh", True)
    if fresh:
        return Lookup(FRESH, entry, "fresh", None, age, ttl, strip=entry.no_cache_fields)
    if entry.no_stale:
        return validate("must-revalidate", False)
    staleness = -ttl
    if 0 < entry.stale_while_revalidate and staleness <= entry.stale_while_revalidate:
        reason = "stale-while-revalidate"
        return Lookup(STALE_OK, entry, reason, None, age, ttl, True, entry.no_cache_fields)
    if cc.max_stale is not None and staleness <= cc.max_stale:
        return Lookup(STALE_OK, entry, "max-stale", None, age, ttl, strip=entry.no_cache_fields)
    return validate("stale", False)


def stale_if_error(entry: Entry, req_headers: Headers, now: float, status: int | None = None) -> bool:
    """May ``entry`` answer because the origin failed (``status`` 5xx, or ``None``: no answer)?

    RFC 5861 4: within the response's or the request's stale-if-error window.  Never for
    an entry that forbids stale (must-revalidate: 5.2.2.2 wants a 504 instead) or must
    always be validated, nor when the client asked for no-cache without allowing it itself.
    """
    if (status is not None and status not in ERROR_STATUSES) or entry.no_cache or entry.no_stale:
        return False
    cc = request_cache_control(req_headers)
    if cc.no_cache and cc.stale_if_error is None:
        return False
    window = max(entry.stale_if_error, float(cc.stale_if_error or 0))
    return window > 0 and entry.age(now) - entry.lifetime <= window


def refresh_entry(
    entry: Entry,
    resp_304_headers: Headers,
    request_time: float,
    response_time: float,
    rules: Rules = DEFAULT_RULES,
) -> Entry | None:
    """``entry`` after a 304 from the exchange at ``request_time``..``response_time``; ``None`` when the
    304 does not select it or changes Vary (the secondary key would be wrong)."""
    headers = update_from_304(entry.headers, resp_304_headers)
    if headers is None:
        return None
    fields = vary_fields(header_values(headers, b"vary"))
    if fields != entry.vary_fields:
        return None
    return _entry(entry.status, headers, fields, entry.vary, request_time, response_time, rules)


# -- decoration ---------------------------------------------------------------------------------


def strip_fields(headers: Headers, names: frozenset[bytes]) -> Headers:
    """``headers`` without the (lower-case) ``names``: a Lookup's ``strip`` set, say."""
    if not names:
        return headers
    return [(n, v) for n, v in headers if n.lower() not in names]


def age_header(age: float) -> bytes:
    """The Age value (5.1): whole seconds, clamped to 0..2**31."""
    if not age > 0:  # also NaN
        return b"0"
    return b"%d" % min(int(age), DELTA_MAX)


def cache_status(
    hit: bool,
    fwd: str | None = None,
    stored: bool = False,
    ttl: float | None = None,
    detail: str | None = None,
    *,
    fwd_status: int | None = None,
    name: str = "ferryman",
) -> bytes:
    """One RFC 9211 Cache-Status member, e.g. ``ferryman; fwd=uri-miss; stored``."""
    parts = [name]
    if hit:
        parts.append("hit")
    if fwd:
        parts.append(f"fwd={fwd}")
    if fwd_status is not None:
        parts.append(f"fwd-status={fwd_status}")
    if stored:
        parts.append("stored")
    if ttl is not None and math.isfinite(ttl):
        parts.append(f"ttl={math.floor(ttl)}")
    if detail:
        clean = "".join(c for c in detail if " " <= c <= "~").replace("\\", "\\\\").replace('"', '\\"')
        parts.append(f'detail="{clean}"')
    return "; ".join(parts).encode("ascii", "replace")


# -- helpers -----------------------------------------------------------------------------------


def _first(headers: Headers, name: bytes) -> bytes | None:
    for n, v in headers:
        if n.lower() == name:
            return v.strip()
    return None


def _has(headers: Headers, name: bytes) -> bool:
    return any(n.lower() == name for n, _ in headers)


def _date(headers: Headers, name: bytes) -> float | None:
    value = _first(headers, name)
    return None if value is None else http_date(value)


def _initial_age(headers: Headers, request_time: float, response_time: float) -> float:
    # 5.1: of a list-based Age (several values or several lines) only the first member counts,
    # and an invalid one is ignored
    values = header_values(headers, b"age")
    age_value = (delta_seconds(values[0].split(b",", 1)[0].strip()) or 0) if values else 0
    date = _date(headers, b"date")
    apparent = 0.0 if date is None else max(0.0, response_time - date)
    return max(apparent, age_value + max(0.0, response_time - request_time))


def _select(entries: Sequence[Entry], req_headers: Headers) -> Entry | None:
    best: Entry | None = None
    keys: dict[tuple[bytes, ...], SecondaryKey] = {}
    for e in entries:
        if e.vary_fields is None:
            continue
        key = keys.get(e.vary_fields)
        if key is None:
            key = keys[e.vary_fields] = secondary_key(e.vary_fields, req_headers)
        if key == e.vary and (best is None or e.response_time > best.response_time):
            best = e
    return best
