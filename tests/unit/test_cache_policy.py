"""RFC 9111 shared-cache policy: storing, freshness, age, reuse, stale-if-error, freshening and
decoration (Cache-Control syntax: test_cache_directives.py; keys, dates, validators and
invalidation: test_cache_key.py).

Every test names the section it covers (RFC 9111 unless stated); times are plain epoch floats.
"""

from __future__ import annotations

import math
import random

import pytest

from ferryman.http1.events import Headers
from ferryman.pipeline.cache import key, policy
from ferryman.pipeline.cache.directives import DELTA_MAX
from ferryman.pipeline.cache.policy import (
    DEFAULT_RULES,
    Entry,
    Lookup,
    Outcome,
    Rules,
    Verdict,
    age_header,
    cache_status,
    current_age,
    format_http_date,
    freshness_lifetime,
    lookup,
    make_entry,
    refresh_entry,
    stale_if_error,
    storable,
    strip_fields,
)
from tests.unit.header_lines import h

T0 = 1_700_000_000.0  # when the origin answered
IMF = "Sun, 06 Nov 1994 08:49:37 GMT"
IMF_T = 784111777.0


def date(t: float) -> str:
    return format_http_date(t).decode()


def entry(
    *resp: str, req: Headers | None = None, status: int = 200, at: float = T0, rules: Rules = DEFAULT_RULES
) -> Entry:
    """A response received at ``at`` (instantly: request_time == response_time), dated then."""
    headers = h(f"Date: {date(at)}", *resp)
    return make_entry(status, req or [], headers, at, at, rules)


def look(e: Entry | list[Entry], *req: str, now: float = T0, method: str = "GET") -> Lookup:
    return lookup(e if isinstance(e, list) else [e], method, h(*req), now)


# -- storing (3, 3.5) ---------------------------------------------------------------------------


def store(resp: Headers, req: Headers | None = None, method: str = "GET", status: int = 200,
          rules: Rules = DEFAULT_RULES) -> Verdict:  # fmt: skip
    return storable(method, status, req or [], resp, rules)


def test_3_get_with_max_age_is_stored() -> None:
    v = store(h("Cache-Control: max-age=60"))
    assert v == Verdict(True) and v


@pytest.mark.parametrize("method", ["HEAD", "POST", "PUT", "get"])
def test_3_only_get_responses_are_stored(method: str) -> None:
    assert store(h("Cache-Control: max-age=60"), method=method) == Verdict(False, "method")


@pytest.mark.parametrize("status", [100, 101, 206, 304])
def test_3_non_final_partial_and_304_not_stored(status: int) -> None:
    assert store(h("Cache-Control: max-age=60"), status=status) == Verdict(False, "status")


def test_5_2_2_5_response_no_store() -> None:
    assert store(h("Cache-Control: max-age=60, no-store")) == Verdict(False, "no-store")


def test_5_2_1_5_request_no_store() -> None:
    assert store(h("Cache-Control: max-age=60"), h("Cache-Control: no-store")) == Verdict(
        False, "request-no-store"
    )


def test_5_2_2_3_must_understand_overrides_no_store_for_understood_status() -> None:
    assert store(h("Cache-Control: no-store, must-understand, max-age=60"))
    v = store(h("Cache-Control: no-store, must-understand, max-age=60"), status=418)
    assert v == Verdict(False, "must-understand")


def test_5_2_2_7_private_not_stored_by_shared_cache_but_by_private_one() -> None:
    assert store(h("Cache-Control: private, max-age=60")) == Verdict(False, "private")
    assert store(h("Cache-Control: private"), rules=Rules(shared=False))


def test_5_2_2_7_qualified_private_stored_without_those_fields() -> None:
    resp = ('Cache-Control: private="Set-Cookie", max-age=60', "Set-Cookie: a=1", "X-Keep: 1")
    assert store(h(*resp))
    stored = entry(*resp).headers
    assert [n for n, _ in stored] == [b"Date", b"Cache-Control", b"X-Keep"]


@pytest.mark.parametrize("directive", ["public", "s-maxage=60", "must-revalidate, max-age=60"])
def test_3_5_authorization_needs_an_explicit_shared_directive(directive: str) -> None:
    auth = h("Authorization: Bearer x")
    assert store(h(f"Cache-Control: {directive}", 'ETag: "v1"'), auth)


def test_3_5_authorization_refused_without_it() -> None:
    auth = h("Authorization: Bearer x")
    assert store(h("Cache-Control: max-age=60"), auth) == Verdict(False, "authorization")
    assert store(h("Cache-Control: max-age=60"), auth, rules=Rules(shared=False))


def test_4_1_vary_star_not_stored() -> None:
    assert store(h("Cache-Control: max-age=60", "Vary: Accept, *")) == Verdict(False, "vary-star")


@pytest.mark.parametrize(
    ("status", "resp"),
    [(200, (f"Last-Modified: {IMF}",)), (404, ('ETag: "a"',)), (301, (f"Last-Modified: {IMF}",)),
     (302, ("Cache-Control: max-age=5",)), (302, (f"Expires: {IMF}",)), (302, ("Expires: 0",)),
     (500, ("Cache-Control: s-maxage=5",)), (307, ("Cache-Control: public", 'ETag: "a"')),
     (200, ("Cache-Control: stale-if-error=60",))],
)  # fmt: skip
def test_3_needs_explicit_freshness_or_heuristic_status(status: int, resp: tuple[str, ...]) -> None:
    assert store(h(*resp), status=status)


@pytest.mark.parametrize(
    ("status", "resp"),
    [(200, ()), (404, ()), (301, ()), (200, ("Cache-Control: public",)), (200, ("Cache-Control: no-cache",)),
     (200, ("Content-Type: text/plain",))],
)  # fmt: skip
def test_3_nothing_stored_that_can_never_be_served_nor_revalidated(
    status: int, resp: tuple[str, ...]
) -> None:
    # 4.2.2 heuristic freshness needs Last-Modified and 4.3 validation needs a validator: a
    # response with neither would be stored with lifetime 0 on every pass, and never used
    assert store(h(*resp), status=status) == Verdict(False, "no-freshness")


@pytest.mark.parametrize("status", [302, 303, 307, 500, 503])
def test_4_2_2_no_freshness_for_non_heuristic_status(status: int) -> None:
    assert store(h(), status=status) == Verdict(False, "no-freshness")


def test_4_2_2_heuristic_statuses_and_default_ttls_are_configurable() -> None:
    assert not store(h(), rules=Rules(heuristic_statuses=frozenset()))
    assert store(h(), status=302, rules=Rules(default_ttls={302: 60.0}))


def test_5_2_2_4_no_cache_response_is_storable() -> None:
    assert store(h("Cache-Control: no-cache", 'ETag: "v1"'))


# -- ignore_origin (operator override) ------------------------------------------------------------

IGNORE = Rules(default_ttls={200: 300.0}, ignore_origin=True)


@pytest.mark.parametrize("directives", ["no-store", "private", "no-cache", "max-age=0, must-revalidate"])
def test_3_ignore_origin_stores_despite_origin_directives(directives: str) -> None:
    assert store(h(f"Cache-Control: {directives}"), rules=IGNORE)
    e = entry(f"Cache-Control: {directives}", rules=IGNORE)
    assert e.lifetime == 300.0
    assert look(e, now=T0 + 10).outcome is Outcome.FRESH


LM_OLD = f"Last-Modified: {date(T0 - 10**6)}"  # heuristic freshness: a day


def test_3_set_cookie_never_stored_on_heuristic_freshness() -> None:
    # the shared cache would replay one user's session cookie to the next (RFC 9111 7.3 / 3)
    assert store(h(LM_OLD, "Set-Cookie: session=alice")) == Verdict(False, "set-cookie")
    assert store(h(LM_OLD, 'ETag: "a"', "Set-Cookie: s=1", "Cache-Control: public")) == Verdict(
        False, "set-cookie"
    )
    assert store(h(LM_OLD)) == Verdict(True)  # the same response without the cookie: heuristic


def test_3_set_cookie_never_stored_on_a_route_default_ttl_alone() -> None:
    rules = Rules(default_ttls={200: 60.0})
    assert store(h("Set-Cookie: s=1"), rules=rules) == Verdict(False, "set-cookie")
    assert store(h(), rules=rules)


@pytest.mark.parametrize(
    "fresh", ["Cache-Control: max-age=60", "Cache-Control: s-maxage=60", f"Expires: {IMF}"]
)
def test_3_set_cookie_stored_on_explicit_freshness(fresh: str) -> None:
    assert store(h(LM_OLD, fresh, "Set-Cookie: s=1"))


def test_3_set_cookie_stored_when_the_route_says_so() -> None:
    rules = Rules(store_set_cookie=True)
    assert store(h(LM_OLD, "Set-Cookie: s=1"), rules=rules)
    assert store(h("Set-Cookie: s=1"), rules=Rules(default_ttls={200: 60.0}, store_set_cookie=True))


def test_5_2_2_7_set_cookie_named_private_is_stored_without_it() -> None:
    resp = (LM_OLD, 'Cache-Control: private="Set-Cookie"', "Set-Cookie: s=1")
    assert store(h(*resp))
    assert b"set-cookie" not in {n.lower() for n, _ in entry(*resp).headers}


@pytest.mark.parametrize(
    ("resp", "stored"),
    [(("Set-Cookie: s=1",), False), (("Set-Cookie: s=1", LM_OLD), False),
     (("Set-Cookie: s=1", "Cache-Control: max-age=60"), True),
     (("Set-Cookie: s=1", f"Expires: {IMF}"), True)],
)  # fmt: skip
def test_3_set_cookie_rule_is_the_same_with_and_without_ignore_origin(
    resp: tuple[str, ...], stored: bool
) -> None:
    normal = Rules(default_ttls={200: 300.0})
    assert bool(store(h(*resp), rules=normal)) is stored
    assert bool(store(h(*resp), rules=IGNORE)) is stored
    both = (Rules(default_ttls={200: 300.0}, store_set_cookie=True),
            Rules(default_ttls={200: 300.0}, ignore_origin=True, store_set_cookie=True))  # fmt: skip
    assert all(store(h(*resp), rules=r) for r in both)


def test_3_ignore_origin_still_guards_auth_cookies_and_client_no_store() -> None:
    assert store(h("Cache-Control: max-age=60"), status=404, rules=IGNORE) == Verdict(False, "no-ttl")
    assert store(h(), h("Authorization: x"), rules=IGNORE) == Verdict(False, "authorization")
    assert store(h("Cache-Control: public"), h("Authorization: x"), rules=IGNORE)
    assert store(h("Set-Cookie: s=1"), rules=IGNORE) == Verdict(False, "set-cookie")
    assert store(h(), h("Cache-Control: no-store"), rules=IGNORE) == Verdict(False, "request-no-store")


# -- targeted cache control (RFC 9213) ----------------------------------------------------------------

CDN = Rules(targets=(b"ferryman-cache-control", b"cdn-cache-control"))


def test_rfc9213_2_2_targeted_field_replaces_cache_control() -> None:
    resp = ("Cache-Control: max-age=60, s-maxage=120", "CDN-Cache-Control: max-age=600")  # RFC 9213 3.1
    assert life(*resp, rules=CDN) == 600
    assert life(*resp) == 120  # without the target list: Cache-Control


def test_rfc9213_3_1_targeted_max_age_lets_the_cdn_store_what_others_may_not() -> None:
    resp = h("CDN-Cache-Control: max-age=600", "Cache-Control: no-store")
    assert store(resp, rules=CDN) and not store(resp)
    assert entry(*[f"{n.decode()}: {v.decode()}" for n, v in resp], rules=CDN).lifetime == 600


@pytest.mark.parametrize(("directive", "reason"), [("no-store", "no-store"), ("private", "private")])
def test_rfc9213_2_2_targeted_no_store_and_private(directive: str, reason: str) -> None:
    resp = h("Cache-Control: public, max-age=600", f"CDN-Cache-Control: {directive}, max-age=60")
    assert store(resp, rules=CDN) == Verdict(False, reason)


def test_rfc9213_2_2_targeted_no_cache_and_must_revalidate() -> None:
    e = entry("Cache-Control: max-age=600", 'ETag: "a"', "CDN-Cache-Control: no-cache, max-age=9", rules=CDN)
    assert look(e, now=T0 + 1).outcome is Outcome.MUST_VALIDATE
    e = entry("CDN-Cache-Control: max-age=1, must-revalidate", "Cache-Control: max-age=600", rules=CDN)
    r = look(e, "Cache-Control: max-stale", now=T0 + 5)
    assert (r.outcome, e.no_stale) == (Outcome.MUST_VALIDATE, True)
    e = entry("CDN-Cache-Control: max-age=1, stale-while-revalidate=60", rules=CDN)
    assert look(e, now=T0 + 5).outcome is Outcome.STALE_OK


def test_rfc9213_2_2_expires_ignored_when_a_targeted_field_is_used() -> None:
    dated = f"Date: {date(T0)}"
    expires = f"Expires: {date(T0 + 3600)}"
    assert life(dated, expires, "CDN-Cache-Control: must-revalidate", rules=CDN) == 0
    assert life(dated, expires, "CDN-Cache-Control: max-age=60,", rules=CDN) == 3600  # invalid: ignored
    # "none" (3.1): the CDN ignores Cache-Control: no-store and Expires, a validator keeps it useful
    resp = h(dated, "Cache-Control: no-store", "CDN-Cache-Control: none", f"Last-Modified: {date(T0 - 1000)}")
    assert store(resp, rules=CDN) and freshness_lifetime(200, resp, T0, CDN) == pytest.approx(100)


def test_rfc9213_2_2_own_field_first_then_cdn_then_cache_control() -> None:
    both = ("Cache-Control: max-age=1", "CDN-Cache-Control: max-age=600", "Ferryman-Cache-Control: max-age=5")
    assert life(*both, rules=CDN) == 5
    assert life(*both, rules=Rules(targets=(b"cdn-cache-control",))) == 600
    assert life("Cache-Control: max-age=1", "Ferryman-Cache-Control: ", rules=CDN) == 1  # empty: ignored


def test_rfc9213_2_1_invalid_targeted_max_age_is_stale_not_absent() -> None:
    assert life(f"Last-Modified: {date(T0 - 10**6)}", "CDN-Cache-Control: max-age=1.5", rules=CDN) == 0


def test_rfc9213_targeted_s_maxage_qualified_no_cache_and_set_cookie() -> None:
    assert life("CDN-Cache-Control: max-age=10, s-maxage=20", rules=CDN) == 20
    e = entry('CDN-Cache-Control: max-age=60, no-cache="X-Secret"', "X-Secret: 1", rules=CDN)
    assert look(e, now=T0 + 1).strip == {b"x-secret"}
    # explicit freshness from the targeted field is explicit: Set-Cookie may be stored
    assert store(h("Set-Cookie: s=1", "CDN-Cache-Control: max-age=60"), rules=CDN)
    assert not store(h("Set-Cookie: s=1", f"Expires: {IMF}", "CDN-Cache-Control: public"), rules=CDN)


# -- freshness lifetime (4.2.1, 4.2.2, 5.3) ---------------------------------------------------------


def life(*resp: str, status: int = 200, rules: Rules = DEFAULT_RULES, received: float = T0) -> float:
    return freshness_lifetime(status, h(*resp), received, rules)


def test_4_2_1_s_maxage_beats_max_age_beats_expires() -> None:
    expires = f"Expires: {date(T0 + 1000)}"
    dated = f"Date: {date(T0)}"
    assert life(dated, "Cache-Control: max-age=10, s-maxage=20", expires) == 20
    assert life(dated, "Cache-Control: max-age=10", expires) == 10
    assert life(dated, expires) == 1000
    assert life("Cache-Control: max-age=10, s-maxage=20", rules=Rules(shared=False)) == 10


def test_4_2_1_expires_minus_date_uses_receipt_time_without_date() -> None:
    assert life(f"Expires: {date(T0 + 60)}", received=T0) == 60
    assert life(f"Expires: {date(T0 + 60)}", "Date: garbage", received=T0) == 60
    assert life(f"Date: {date(T0 - 100)}", f"Expires: {date(T0)}", received=T0) == 100


@pytest.mark.parametrize("value", ["0", "-1", "never", "Sun, 06 Nov 1994 08:49:37"])
def test_5_3_invalid_expires_means_already_expired(value: str) -> None:
    assert life(f"Expires: {value}", "Last-Modified: " + IMF) == 0


FUTURE = 4102444800.0  # Fri, 01 Jan 2100 00:00:00 GMT


@pytest.mark.parametrize(
    "value",
    ["Fri,  01 Jan 2100 00:00:00 GMT", "Fri, 01  Jan 2100 00:00:00 GMT", "Fri, 01 Jan 2100  00:00:00 GMT",
     "Fri, 01 Jan 2100 00:00:00  GMT", "Fri, 01 jan 2100 00:00:00 GMT", "Fri, 01 Jan 2100 00:00:00 gmt",
     "Fri, 01 Jan 2100 00:00:00 UTC", "Fri, 1 Jan 2100 00:00:00 GMT", "fri, 01 Jan 2100 00:00:00 GMT",
     "Fri,01 Jan 2100 00:00:00 GMT", "Friday,  01-Jan-00 00:00:00 GMT", "Fri Jan 1 00:00:00 2100",
     "Fri\t01 Jan 2100 00:00:00 GMT"],
)  # fmt: skip
def test_5_3_expires_near_miss_of_the_date_grammar_is_already_expired(value: str) -> None:
    # 5.3: "A cache recipient MUST interpret invalid date formats ... as representing a time
    # in the past"; RFC 9110 5.6.7: HTTP-date is case-sensitive, one space between parts
    assert life(f"Date: {date(T0)}", f"Expires: {value}") == 0


@pytest.mark.parametrize(
    "value", ["Fri, 01 Jan 2100 00:00:00 GMT", "Friday, 01-Jan-00 00:00:00 GMT", "Fri Jan  1 00:00:00 2100",
              " Fri, 01 Jan 2100 00:00:00 GMT "],
)  # fmt: skip
def test_5_3_expires_in_each_http_date_format(value: str) -> None:
    t0 = FUTURE - 600
    if "-00 " in value:  # rfc850's two-digit year: 2000, not 2100
        t0 = 946684800.0 - 600
    assert life(f"Date: {date(t0)}", f"Expires: {value}") == 600


def test_4_2_1_conflicting_expires_lines_mean_stale_identical_ones_do_not() -> None:
    assert life(f"Expires: {date(T0 + 60)}", f"Expires: {date(T0 + 90)}") == 0
    assert life(f"Expires: {date(T0 + 60)}", f"Expires: {date(T0 + 60)}") == 60


def test_5_3_expires_in_the_past_is_zero_not_negative() -> None:
    assert life(f"Date: {date(T0)}", f"Expires: {date(T0 - 60)}") == 0


def test_4_2_1_invalid_max_age_beats_a_future_expires() -> None:
    assert life("Cache-Control: max-age=soon", f"Expires: {date(T0 + 600)}") == 0


def test_4_2_2_heuristic_is_ten_percent_of_age_since_last_modified_capped() -> None:
    dated = f"Date: {date(T0)}"
    assert life(dated, f"Last-Modified: {date(T0 - 1000)}") == pytest.approx(100)
    assert life(dated, f"Last-Modified: {date(T0 - 10**8)}") == 86400
    assert life(dated, f"Last-Modified: {date(T0 - 1000)}", rules=Rules(heuristic_fraction=0.5)) == 500
    assert life(dated, f"Last-Modified: {date(T0 - 10**6)}", rules=Rules(heuristic_max=3600)) == 3600
    assert life(dated, f"Last-Modified: {date(T0 - 10**4)}", rules=Rules(heuristic_max=3600)) == 1000
    assert life(dated, f"Last-Modified: {date(T0 + 1000)}") == 0  # in the future
    assert life(dated, "Last-Modified: nonsense") == 0
    assert life(dated) == 0


def test_4_2_2_heuristic_only_for_heuristic_statuses_or_public() -> None:
    lm = f"Last-Modified: {date(T0 - 1000)}"
    assert life(lm, status=302) == 0
    assert life(lm, "Cache-Control: public", status=302) == pytest.approx(100)
    assert life(lm, status=404) == pytest.approx(100)


def test_4_2_2_default_ttl_replaces_heuristic_but_not_explicit_freshness() -> None:
    rules = Rules(default_ttls={200: 30.0, 302: 5.0, 404: -3.0})
    lm = f"Last-Modified: {date(T0 - 10**6)}"
    assert life(lm, rules=rules) == 30
    assert life(status=302, rules=rules) == 5
    assert life(status=404, rules=rules) == 0  # a negative TTL is clamped
    assert life(lm, "Cache-Control: max-age=7", rules=rules) == 7


def test_4_2_1_ignore_origin_uses_route_ttl_only() -> None:
    assert life("Cache-Control: max-age=7", rules=IGNORE) == 300
    assert life("Cache-Control: max-age=7", status=404, rules=IGNORE) == 0


# -- age (4.2.3) -------------------------------------------------------------------------------------


def test_4_2_3_resident_time_only() -> None:
    assert current_age(h(f"Date: {date(T0)}"), T0, T0, T0 + 30) == 30


def test_4_2_3_age_header_plus_response_delay() -> None:
    assert current_age(h(f"Date: {date(T0)}", "Age: 100"), T0 - 2, T0, T0 + 10) == 112


def test_4_2_3_apparent_age_when_larger() -> None:
    assert current_age(h(f"Date: {date(T0 - 50)}", "Age: 10"), T0, T0, T0) == 50


def test_4_2_3_clock_skew_never_negative() -> None:
    assert current_age(h(f"Date: {date(T0 + 500)}"), T0 + 1, T0, T0 - 5) == 0


@pytest.mark.parametrize("age", ["abc", "-5", "1.5", ""])
def test_5_1_invalid_age_ignored(age: str) -> None:
    assert current_age(h(f"Age: {age}"), T0, T0, T0) == 0


def test_5_1_huge_age_clamped_and_of_several_age_values_the_first_counts() -> None:
    assert current_age(h("Age: 99999999999999"), T0, T0, T0) == DELTA_MAX
    # 5.1: "a cache encountering a message with a list-based Age field value SHOULD use the
    # first member of the field value, discarding subsequent ones" - lines join into one list
    assert current_age(h("Age: 5", "Age: 9, 7"), T0, T0, T0) == 5
    assert current_age(h("Age: 30, 33"), T0, T0, T0) == 30
    assert current_age(h("Age: 7, 300"), T0, T0, T0) == 7
    assert current_age(h("Age: x, 300"), T0, T0, T0) == 0  # an invalid first member: ignored


def test_4_2_3_entry_age_from_the_first_age_value() -> None:
    e = entry("Cache-Control: max-age=100", "Age: 30", "Age: 90")
    r = look(e, now=T0 + 10)
    assert (r.outcome, r.age) == (Outcome.FRESH, 40)
    assert age_header(r.age) == b"40"


def test_4_2_3_serving_drops_the_stored_age_for_the_current_one() -> None:
    # one Age on a hit: the stored upstream value is dropped, the caller adds age_header()
    assert DEFAULT_RULES.serve_drop == {b"age"}
    e = entry("Cache-Control: max-age=100", "Age: 30")
    assert strip_fields(e.headers, DEFAULT_RULES.serve_drop) == [(b"Date", date(T0).encode()),
                                                               (b"Cache-Control", b"max-age=100")]
    assert Rules(hidden=frozenset({b"x-own"})).serve_drop == {b"age", b"x-own"}


# -- reuse (4, 4.2.4, 5.2.1) --------------------------------------------------------------------------


def test_4_2_fresh_entry_served_with_age_and_ttl() -> None:
    e = entry("Cache-Control: max-age=60")
    r = look(e, now=T0 + 20)
    assert (r.outcome, r.entry, r.reason, r.fwd, r.age, r.ttl) == (Outcome.FRESH, e, "fresh", None, 20, 40)


def test_4_2_stale_entry_must_be_validated() -> None:
    r = look(entry("Cache-Control: max-age=60"), now=T0 + 60)
    assert (r.outcome, r.reason, r.fwd, r.ttl) == (Outcome.MUST_VALIDATE, "stale", "stale", 0)


def test_4_no_entry_is_a_uri_miss() -> None:
    r = look([])
    assert (r.outcome, r.fwd, r.entry) == (Outcome.MISS, "uri-miss", None)


def test_5_2_1_7_only_if_cached_without_entry_is_504() -> None:
    assert look([], "Cache-Control: only-if-cached").outcome is Outcome.ONLY_IF_CACHED_MISS


def test_5_2_1_7_only_if_cached_serves_fresh_and_refuses_stale() -> None:
    e = entry("Cache-Control: max-age=60")
    assert look(e, "Cache-Control: only-if-cached", now=T0 + 1).outcome is Outcome.FRESH
    r = look(e, "Cache-Control: only-if-cached", now=T0 + 100)
    assert (r.outcome, r.fwd) == (Outcome.ONLY_IF_CACHED_MISS, None)
    assert look(e, "Cache-Control: only-if-cached, max-stale", now=T0 + 100).outcome is Outcome.STALE_OK


def test_4_1_vary_mismatch_is_a_miss_match_is_a_hit() -> None:
    e = entry("Cache-Control: max-age=60", "Vary: Accept-Encoding", req=h("Accept-Encoding: gzip"))
    assert look(e, "Accept-Encoding:  GZIP").outcome is Outcome.FRESH
    r = look(e, "Accept-Encoding: br")
    assert (r.outcome, r.fwd) == (Outcome.MISS, "vary-miss")
    assert look(e).outcome is Outcome.MISS  # absent field does not match a present one
    assert (
        look(e, "Accept-Encoding: br", "Cache-Control: only-if-cached").outcome is Outcome.ONLY_IF_CACHED_MISS
    )


def test_4_1_most_recent_matching_variant_wins() -> None:
    old = entry("Cache-Control: max-age=600", at=T0 - 100)
    new = entry("Cache-Control: max-age=600", at=T0 - 10)
    gz = entry("Cache-Control: max-age=600", "Vary: Accept-Encoding", req=h("Accept-Encoding: gzip"), at=T0)
    assert look([old, gz, new]).entry is new
    assert look([old, gz, new], "Accept-Encoding: gzip").entry is gz


def test_4_1_vary_star_entry_never_matches() -> None:
    e = make_entry(200, [], h("Vary: *", "Cache-Control: max-age=60"), T0, T0)
    assert e.vary_fields is None
    assert look(e).outcome is Outcome.MISS


def test_4_only_get_and_head_are_answered_head_from_get() -> None:
    e = entry("Cache-Control: max-age=60")
    assert look(e, method="HEAD").outcome is Outcome.FRESH
    r = look(e, method="POST")
    assert (r.outcome, r.fwd) == (Outcome.MISS, "method")


def test_5_2_1_4_request_no_cache_forces_validation() -> None:
    e = entry("Cache-Control: max-age=60")
    r = look(e, "Cache-Control: no-cache", now=T0 + 1)
    assert (r.outcome, r.reason, r.fwd) == (Outcome.MUST_VALIDATE, "request-no-cache", "request")


def test_5_4_pragma_no_cache_forces_validation_unless_cache_control_present() -> None:
    e = entry("Cache-Control: max-age=60")
    assert look(e, "Pragma: no-cache", now=T0 + 1).outcome is Outcome.MUST_VALIDATE
    assert look(e, "Pragma: no-cache", "Cache-Control: max-stale", now=T0 + 1).outcome is Outcome.FRESH


def test_5_2_1_1_request_max_age() -> None:
    e = entry("Cache-Control: max-age=600")
    assert look(e, "Cache-Control: max-age=0", now=T0 + 1).outcome is Outcome.MUST_VALIDATE
    assert look(e, "Cache-Control: max-age=30", now=T0 + 10).outcome is Outcome.FRESH
    r = look(e, "Cache-Control: max-age=30", now=T0 + 31)
    assert (r.outcome, r.reason, r.fwd) == (Outcome.MUST_VALIDATE, "max-age", "request")
    assert look(e, "Cache-Control: max-age=bogus", now=T0 + 1).outcome is Outcome.MUST_VALIDATE


def test_5_2_1_1_request_max_age_bounds_max_stale() -> None:
    e = entry("Cache-Control: max-age=50")
    assert look(e, "Cache-Control: max-age=60, max-stale=30", now=T0 + 55).outcome is Outcome.STALE_OK
    assert look(e, "Cache-Control: max-age=60, max-stale=30", now=T0 + 65).outcome is Outcome.MUST_VALIDATE


def test_5_2_1_3_min_fresh() -> None:
    e = entry("Cache-Control: max-age=60")
    assert look(e, "Cache-Control: min-fresh=30", now=T0 + 20).outcome is Outcome.FRESH
    r = look(e, "Cache-Control: min-fresh=30", now=T0 + 40)
    assert (r.outcome, r.reason) == (Outcome.MUST_VALIDATE, "min-fresh")
    assert look(e, "Cache-Control: min-fresh=1, max-stale", now=T0 + 90).outcome is Outcome.MUST_VALIDATE


def test_5_2_1_2_max_stale_without_value_accepts_any_staleness() -> None:
    r = look(entry("Cache-Control: max-age=60"), "Cache-Control: max-stale", now=T0 + 10**6)
    assert (r.outcome, r.reason, r.revalidate, r.fwd) == (Outcome.STALE_OK, "max-stale", False, None)
    assert r.ttl < 0


def test_5_2_1_2_max_stale_with_value_bounds_staleness() -> None:
    e = entry("Cache-Control: max-age=60")
    assert look(e, "Cache-Control: max-stale=30", now=T0 + 90).outcome is Outcome.STALE_OK
    assert look(e, "Cache-Control: max-stale=30", now=T0 + 91).outcome is Outcome.MUST_VALIDATE


@pytest.mark.parametrize("directive", ["must-revalidate", "proxy-revalidate", "s-maxage=60"])
def test_4_2_4_revalidate_directives_forbid_stale_even_with_max_stale(directive: str) -> None:
    e = entry(f"Cache-Control: max-age=60, {directive}, stale-while-revalidate=600")
    r = look(e, "Cache-Control: max-stale", now=T0 + 61)
    assert (r.outcome, r.reason) == (Outcome.MUST_VALIDATE, "must-revalidate")


def test_5_2_2_8_proxy_revalidate_does_not_bind_a_private_cache() -> None:
    e = entry("Cache-Control: max-age=60, proxy-revalidate", rules=Rules(shared=False))
    assert look(e, "Cache-Control: max-stale", now=T0 + 61).outcome is Outcome.STALE_OK


def test_5_2_2_4_unqualified_no_cache_validates_even_when_fresh() -> None:
    r = look(entry("Cache-Control: no-cache, max-age=600", "Cache-Control: max-stale"), now=T0 + 1)
    assert (r.outcome, r.reason, r.fwd) == (Outcome.MUST_VALIDATE, "no-cache", "stale")


def test_5_2_2_4_qualified_no_cache_served_with_fields_stripped() -> None:
    e = entry('Cache-Control: no-cache="Set-Cookie", max-age=600', "Set-Cookie: a=1")
    r = look(e, now=T0 + 1)
    assert (r.outcome, r.strip) == (Outcome.FRESH, {b"set-cookie"})
    assert strip_fields(e.headers, r.strip) == [(n, v) for n, v in e.headers if n != b"Set-Cookie"]
    assert strip_fields(e.headers, frozenset()) is e.headers


def test_rfc5861_3_stale_while_revalidate_serves_and_asks_for_refresh() -> None:
    e = entry("Cache-Control: max-age=60, stale-while-revalidate=30")
    r = look(e, now=T0 + 70)
    assert (r.outcome, r.reason, r.revalidate) == (Outcome.STALE_OK, "stale-while-revalidate", True)
    assert look(e, now=T0 + 91).outcome is Outcome.MUST_VALIDATE
    assert look(e, "Cache-Control: no-cache", now=T0 + 70).outcome is Outcome.MUST_VALIDATE


def test_5_2_1_5_request_no_store_may_still_be_answered_from_cache() -> None:
    assert look(entry("Cache-Control: max-age=60"), "Cache-Control: no-store").outcome is Outcome.FRESH


def test_4_2_invalid_max_age_entry_is_stale_at_once() -> None:
    e = entry("Cache-Control: max-age=bogus", f"Expires: {date(T0 + 600)}")
    assert (e.lifetime, look(e).outcome) == (0, Outcome.MUST_VALIDATE)


# -- stale-if-error (RFC 5861 4) ---------------------------------------------------------------------


def test_rfc5861_4_stale_if_error_window_from_response() -> None:
    e = entry("Cache-Control: max-age=60, stale-if-error=100")
    assert stale_if_error(e, [], T0 + 150, 503)
    assert stale_if_error(e, [], T0 + 150, None)  # origin unreachable
    assert not stale_if_error(e, [], T0 + 161, 503)
    assert not stale_if_error(e, [], T0 + 150, 404)
    assert not stale_if_error(e, [], T0 + 150, 501)


def test_rfc5861_4_stale_if_error_window_from_request() -> None:
    e = entry("Cache-Control: max-age=60")
    assert not stale_if_error(e, [], T0 + 70, 500)
    assert stale_if_error(e, h("Cache-Control: stale-if-error=20"), T0 + 70, 500)
    assert stale_if_error(e, h("Cache-Control: no-cache, stale-if-error=20"), T0 + 70, 500)


def test_rfc5861_4_stale_if_error_overridden_by_must_revalidate_and_no_cache() -> None:
    for directives in ("must-revalidate", "no-cache", "s-maxage=60"):
        e = entry(f"Cache-Control: max-age=60, {directives}, stale-if-error=100")
        assert not stale_if_error(e, [], T0 + 70, 503), directives
    e = entry("Cache-Control: max-age=60, stale-if-error=100")
    assert not stale_if_error(e, h("Cache-Control: no-cache"), T0 + 70, 503)


# -- freshening after a 304 (4.3.4) ----------------------------------------------------------------


def test_4_3_4_refresh_entry_restarts_freshness_from_the_304() -> None:
    e = entry('ETag: "v1"', "Cache-Control: max-age=60", "Vary: Accept", req=h("Accept: a"))
    later = T0 + 1000
    fresh = refresh_entry(
        e, h(f"Date: {date(later)}", 'ETag: "v1"', "Cache-Control: max-age=120"), later, later
    )
    assert fresh is not None
    assert (fresh.lifetime, fresh.vary, fresh.response_time) == (120, e.vary, later)
    assert look(fresh, "Accept: a", now=later + 100).outcome is Outcome.FRESH
    assert refresh_entry(e, h('ETag: "v2"'), later, later) is None
    assert refresh_entry(e, h('ETag: "v1"', "Vary: Cookie"), later, later) is None


# -- decoration (5.1, RFC 9211) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "out"), [(0, b"0"), (12.9, b"12"), (-3, b"0"), (math.nan, b"0"), (1e30, b"2147483648")]
)
def test_5_1_age_header(age: float, out: bytes) -> None:
    assert age_header(age) == out


def test_rfc9211_cache_status_members() -> None:
    assert cache_status(True, ttl=41.7) == b"ferryman; hit; ttl=41"
    assert cache_status(False, "uri-miss", stored=True) == b"ferryman; fwd=uri-miss; stored"
    assert (
        cache_status(False, "stale", fwd_status=304, ttl=-0.5)
        == b"ferryman; fwd=stale; fwd-status=304; ttl=-1"
    )
    assert cache_status(False, "request", ttl=math.inf) == b"ferryman; fwd=request"
    assert cache_status(False, detail='no "store"\\\n') == b'ferryman; detail="no \\"store\\"\\\\"'
    assert cache_status(True, name="edge") == b"edge; hit"


def test_rfc9211_lookup_feeds_cache_status() -> None:
    r = look(entry("Cache-Control: max-age=60"), now=T0 + 1)
    assert cache_status(r.outcome is Outcome.FRESH, r.fwd, ttl=r.ttl) == b"ferryman; hit; ttl=59"


# -- robustness (1.2.2, 4.2.1, 5.3: bad input is interpreted, never raised on) ------------------------

_GARBAGE = [
    b"",
    b" ",
    b",",
    b"=",
    b'"',
    b'"a,b',
    b"\\",
    b"max-age=-1",
    b"max-age=" + b"9" * 5000,
    b'no-cache="',
    b"W/",
    b'W/"x"',
    b"*",
    b"0",
    b"Sun, 31 Feb 2023 00:00:00 GMT",
    b"\xff\xfe",
    b"a" * 300,
    b"private=,",
    b"s-maxage=1e9",
    b"http://[::1",
    b"//x",
    b"Thursday, 99-Foo-99 99:99:99 GMT",
    b"\x00\t",
]
_NAMES = [
    b"Cache-Control",
    b"Expires",
    b"Date",
    b"Age",
    b"Last-Modified",
    b"ETag",
    b"Vary",
    b"Pragma",
    b"If-None-Match",
    b"If-Modified-Since",
    b"Location",
    b"Content-Location",
    b"Authorization",
    b"Set-Cookie",
    b"Accept-Encoding",
]


def junk(rnd: random.Random) -> bytes:
    return rnd.choice(_GARBAGE) + rnd.choice(_GARBAGE)


def test_1_2_2_garbage_fields_never_raise() -> None:
    rnd = random.Random(9111)
    rules = Rules(default_ttls={200: 60.0}, ignore_origin=True)
    for i in range(400):
        req = [(rnd.choice(_NAMES), junk(rnd)) for _ in range(rnd.randint(0, 5))]
        resp = [(rnd.choice(_NAMES), junk(rnd)) for _ in range(rnd.randint(0, 6))]
        r = rules if i % 4 == 0 else DEFAULT_RULES
        storable("GET", 200, req, resp, r)
        e = make_entry(200, req, resp, T0 - 1, T0, r)
        assert e.lifetime >= 0 and e.initial_age >= 0
        lk = lookup([e], "GET", req, T0 + rnd.random() * 1000, r)
        assert isinstance(lk.outcome, Outcome)
        stale_if_error(e, req, T0 + 5, 503)
        refresh_entry(e, resp, T0, T0, r)
        policy.client_conditional_304("GET", req, 200, resp, T0)
        policy.invalidations("POST", 201, "http://example.com/a", resp)
        policy.validation_headers(req, resp)
        key.vary_key([v for _, v in resp], req)


def test_engine_imports_the_whole_cache_phase_from_policy() -> None:
    """Validators, dates and invalidation live in key.py; policy re-exports them for the engine."""
    for name in (
        "SecondaryKey",
        "http_date",
        "format_http_date",
        "conditional_headers",
        "validation_headers",
        "update_from_304",
        "client_conditional_304",
        "not_modified_headers",
        "invalidations",
    ):
        assert getattr(policy, name) is getattr(key, name)
