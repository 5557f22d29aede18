"""RFC 9111 5.2 Cache-Control syntax (and Pragma, 5.4): field values in, `CacheControl` out.

Every test names the section it covers (RFC 9111 unless stated).
"""

from __future__ import annotations

import math

import pytest

from ferryman.pipeline.cache.directives import (
    DELTA_MAX,
    CacheControl,
    parse_cache_control,
    request_cache_control,
    response_cache_control,
)
from tests.unit.header_lines import h


def cc(*values: str) -> CacheControl:
    return parse_cache_control([v.encode() for v in values])


# -- Cache-Control parsing (5.2) --------------------------------------------------------------


def test_5_2_directives_case_insensitive_across_field_lines() -> None:
    c = cc("No-Store, MAX-AGE=60", " public ,must-revalidate", "Proxy-Revalidate, must-understand")
    assert c == CacheControl(
        no_store=True,
        public=True,
        must_revalidate=True,
        proxy_revalidate=True,
        must_understand=True,
        max_age=60,
    )


def test_5_2_arguments_accepted_in_quoted_form() -> None:
    assert cc('max-age="5"', 's-maxage="7"').max_age == 5
    assert cc('s-maxage="7"').s_maxage == 7


@pytest.mark.parametrize(
    "bad",
    [
        "max-age=abc",
        "max-age=-1",
        "max-age=+5",
        "max-age=",
        "max-age",
        "max-age=1.5",
        "max-age=5 0",
        'max-age="5',
        "max-age=٣",
    ],
)
def test_4_2_1_invalid_max_age_means_stale_not_absent(bad: str) -> None:
    assert cc(bad).max_age == 0
    assert cc(bad.replace("max-age", "s-maxage")).s_maxage == 0


def test_1_2_2_huge_delta_seconds_clamped_to_2_31() -> None:
    assert cc("max-age=99999999999").max_age == DELTA_MAX
    assert cc("max-age=" + "9" * 5000).max_age == DELTA_MAX  # no int() digit-limit error
    assert cc("max-age=2147483647").max_age == 2147483647


def test_4_2_1_repeated_directives_take_the_most_restrictive_value() -> None:
    assert cc("max-age=100, max-age=10").max_age == 10
    assert cc("max-age=10", "max-age=100").max_age == 10
    assert cc("max-age=100, max-age=abc").max_age == 0
    assert cc("min-fresh=5, min-fresh=50").min_fresh == 50
    assert cc("max-stale, max-stale=30").max_stale == 30
    assert cc("stale-while-revalidate=60, stale-while-revalidate=5").stale_while_revalidate == 5


def test_5_2_1_2_max_stale_with_and_without_value() -> None:
    assert cc("max-stale").max_stale == math.inf
    assert cc("max-stale=30").max_stale == 30
    assert cc("max-stale=abc").max_stale is None  # ignored: no permission to go stale


def test_rfc5861_invalid_stale_extensions_and_min_fresh_ignored() -> None:
    c = cc("stale-while-revalidate=x, stale-if-error=-3, min-fresh=no")
    assert (c.stale_while_revalidate, c.stale_if_error, c.min_fresh) == (None, None, None)
    assert cc("stale-while-revalidate=30, stale-if-error=600").stale_if_error == 600


def test_5_2_2_4_qualified_no_cache_with_quoted_list_holding_commas() -> None:
    c = cc('no-cache="Set-Cookie, X-Foo", max-age=60')
    assert c.no_cache is False
    assert c.no_cache_fields == {b"set-cookie", b"x-foo"}
    assert c.max_age == 60
    assert cc("no-cache=Set-Cookie").no_cache_fields == {b"set-cookie"}


def test_5_2_2_7_qualified_private_fields() -> None:
    c = cc('private="Set-Cookie"')
    assert (c.private, c.private_fields) == (False, {b"set-cookie"})


@pytest.mark.parametrize("value", ['no-cache=""', 'no-cache=","', "no-cache=", 'no-cache="a, max-age=5'])
def test_5_2_2_4_empty_or_malformed_field_list_means_unqualified(value: str) -> None:
    c = cc(value)
    assert c.no_cache is True
    assert c.max_age is None  # an unbalanced quote swallows the rest of the line


def test_5_2_2_4_unqualified_no_cache_wins_over_qualified() -> None:
    c = cc('no-cache="x"', "no-cache")
    assert c.no_cache is True and c.no_cache_fields == {b"x"}


def test_5_2_escaped_quotes_inside_quoted_string() -> None:
    c = cc(r'no-cache="a\"b, c", max-age=3')
    assert c.no_cache_fields == {b'a"b', b"c"}
    assert c.max_age == 3


def test_5_2_restrictive_flags_survive_arguments_permissive_ones_do_not() -> None:
    assert cc("no-store=1").no_store is True
    assert cc("must-revalidate=yes").must_revalidate is True
    assert cc("public=yes").public is False
    assert cc("must-understand=1").must_understand is False


@pytest.mark.parametrize("junk", [",,,", "=", "=5", " ; ", "max-age 60", "foo=bar, baz", "\x00\xff", ""])
def test_5_2_3_unknown_or_malformed_directives_ignored(junk: str) -> None:
    assert parse_cache_control([junk.encode("latin-1")]) == CacheControl()


def test_5_4_pragma_no_cache_only_without_cache_control() -> None:
    assert request_cache_control(h("Pragma: no-cache")).no_cache is True
    assert request_cache_control(h("Pragma: foo, No-Cache")).no_cache is True
    assert request_cache_control(h("Pragma: no-cache", "Cache-Control: max-age=5")).no_cache is False
    assert request_cache_control(h("Pragma: x")) == CacheControl()


def test_rfc9213_targeted_field_replaces_cache_control_only_when_listed() -> None:
    resp = h("Cache-Control: no-store", "CDN-Cache-Control: max-age=60")
    assert response_cache_control(resp) == (CacheControl(no_store=True), False)
    assert response_cache_control(resp, (b"cdn-cache-control",)) == (CacheControl(max_age=60), True)
    assert response_cache_control(h("Cache-Control: max-age=5"), (b"cdn-cache-control",)) == (
        CacheControl(max_age=5),
        False,
    )
