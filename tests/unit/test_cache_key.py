"""What identifies a stored response: primary key (RFC 9111 2, RFC 9110 4.2.3), Vary (4.1),
HTTP dates (RFC 9110 5.6.7), validators (4.3, RFC 9110 13) and invalidation (4.4)."""

from __future__ import annotations

import pytest

from ferryman.pipeline.cache.key import (
    cache_key,
    client_conditional_304,
    conditional_headers,
    format_http_date,
    http_date,
    http_date_strict,
    invalidations,
    not_modified_headers,
    prefix_key,
    request_key,
    same_origin,
    secondary_key,
    update_from_304,
    uri_key,
    validation_headers,
    variant,
    vary_fields,
    vary_key,
)
from tests.unit.header_lines import h

T0 = 1_700_000_000.0
IMF = "Sun, 06 Nov 1994 08:49:37 GMT"
IMF_T = 784111777.0


def date(t: float) -> str:
    return format_http_date(t).decode()


# -- primary key (RFC 9111 2) ----------------------------------------------------------------


def test_rfc9111_2_get_and_head_share_a_key_other_methods_do_not() -> None:
    get = cache_key("GET", "http", b"example.com", b"/a?b=1")
    assert get == b"http://example.com/a?b=1"
    assert cache_key("HEAD", "http", b"example.com", b"/a?b=1") == get
    post = cache_key("POST", "http", b"example.com", b"/a?b=1")
    assert post != get and post.startswith(b"POST ")


def test_rfc3986_6_2_2_1_scheme_and_host_are_case_insensitive() -> None:
    assert cache_key("GET", "HTTP", b"ExAmPle.COM", b"/Path") == b"http://example.com/Path"


@pytest.mark.parametrize(
    ("scheme", "authority", "expected"),
    [
        ("http", b"example.com:80", b"http://example.com/"),
        ("https", b"example.com:443", b"https://example.com/"),
        ("http", b"example.com:443", b"http://example.com:443/"),
        ("https", b"example.com:8443", b"https://example.com:8443/"),
        ("http", b"example.com:0080", b"http://example.com/"),
        ("http", b"example.com:", b"http://example.com/"),
        ("http", b"[::1]:80", b"http://[::1]/"),
        ("http", b"[::1]:8080", b"http://[::1]:8080/"),
        ("http", b"[::1]", b"http://[::1]/"),
        ("http", b"user:pw@example.com", b"http://example.com/"),
    ],
)
def test_rfc9110_4_2_3_default_port_and_userinfo_normalised(
    scheme: str, authority: bytes, expected: bytes
) -> None:
    assert cache_key("GET", scheme, authority, b"/") == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"", b"/"),
        (b"?q=1", b"/?q=1"),
        (b"/A/b", b"/A/b"),  # path case is significant
        (b"/%7euser", b"/~user"),  # unreserved: decoded
        (b"/%41%62", b"/Ab"),
        (b"/a%2fb", b"/a%2Fb"),  # reserved: kept, hex upper-cased
        (b"/a%2Fb", b"/a%2Fb"),
        (b"/100%", b"/100%"),  # malformed escapes left alone
        (b"/%zz%4", b"/%zz%4"),
        (b"/p?x=%7e&y=%2f", b"/p?x=~&y=%2F"),
    ],
)
def test_rfc3986_6_2_2_2_path_normalisation(target: bytes, expected: bytes) -> None:
    assert cache_key("GET", "http", b"h", target) == b"http://h" + expected


def test_rfc9111_4_4_uri_key_matches_the_request_key() -> None:
    assert uri_key("http://Example.com:80/a?b") == cache_key("GET", "http", b"example.com", b"/a?b")
    assert uri_key("https://example.com") == b"https://example.com/"
    assert uri_key("https://example.com/a#frag") == b"https://example.com/a"


@pytest.mark.parametrize(
    "uri", ["/relative", "ftp://example.com/", "http://[::1/", "", "http:///x", "http://é/"]
)
def test_rfc9111_4_4_uri_key_rejects_what_is_not_an_absolute_http_uri(uri: str) -> None:
    assert uri_key(uri) is None


@pytest.mark.parametrize(
    ("scheme", "authority", "target"),
    [("http", b"Example.com", b"/a?b"),  # origin-form: straight from the origin or a reverse route
     ("http", b"example.com", b"http://EXAMPLE.com:80/a?b"),  # absolute-form, sent to a parent
     ("https", b"example.com:443", b"/a?b"),
     ("http", b"example.com", b"https://example.com/a?b")],  # the URL's scheme, not the hop's
)  # fmt: skip
def test_rfc9111_2_request_key_is_the_uri_key_whatever_the_target_form(
    scheme: str, authority: bytes, target: bytes
) -> None:
    uri = "https://example.com/a?b" if b"https" in scheme.encode() + target else "http://example.com/a?b"
    assert request_key(scheme, authority, target) == uri_key(uri)


def test_rfc9111_2_request_key_of_an_absolute_target_without_path() -> None:
    assert request_key("http", b"x", b"http://Example.com") == b"http://example.com/"


@pytest.mark.parametrize(
    ("prefix", "key"),
    [("http://SITE.Test/pfx/", b"http://site.test/pfx/"), ("HTTP://site.test:80/pfx/", b"http://site.test/pfx/"),
     ("http://site.test/pfx/%7e", b"http://site.test/pfx/~"), ("http://site.test/%2f", b"http://site.test/%2F"),
     ("https://site.test:443", b"https://site.test/"), ("/relative", None)],
)  # fmt: skip
def test_rfc9111_2_purge_prefix_normalised_like_keys(prefix: str, key: bytes | None) -> None:
    assert prefix_key(prefix) == key


# -- origins (RFC 9111 4.4, RFC 6454) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("http://example.com/a", "http://EXAMPLE.com:80/b?c", True),
        ("https://example.com/", "https://example.com:443/x", True),
        ("http://example.com/", "https://example.com/", False),
        ("http://example.com/", "http://example.com:8080/", False),
        ("http://example.com/", "http://evil.example/", False),
        ("http://example.com/", "/relative", False),
        ("http://[::1/", "http://[::1/", False),  # unparsable never matches, not even itself
    ],
)
def test_rfc9111_4_4_same_origin(a: str, b: str, same: bool) -> None:
    assert same_origin(a, b) is same


# -- Vary (RFC 9111 4.1) ------------------------------------------------------------------------


def test_rfc9111_4_1_vary_fields_are_lowercased_sorted_and_deduplicated() -> None:
    assert vary_fields([b"Accept-Encoding, User-Agent", b" accept-encoding ,Cookie,,"]) == (
        b"accept-encoding",
        b"cookie",
        b"user-agent",
    )
    assert vary_fields([]) == ()


def test_rfc9111_4_1_vary_star_never_matches() -> None:
    assert vary_fields([b"Accept, *"]) is None
    assert vary_key([b"*"], h("Accept: */*")) is None


def test_rfc9111_4_1_absent_field_differs_from_empty_one() -> None:
    fields = (b"cookie",)
    assert secondary_key(fields, h()) == ((b"cookie", None),)
    assert secondary_key(fields, h("Cookie:")) == ((b"cookie", b""),)
    assert secondary_key(fields, h()) != secondary_key(fields, h("Cookie:"))


def test_rfc9111_4_1_whitespace_and_field_lines_are_normalised() -> None:
    fields = (b"accept",)
    one = secondary_key(fields, h("Accept: text/html,  application/json"))
    two = secondary_key(fields, h("Accept: text/html", "accept:application/json "))
    three = secondary_key(fields, h("Accept:   text/html ,application/json,"))
    assert one == two == three == ((b"accept", b"text/html, application/json"),)


def test_rfc9111_4_1_case_insensitive_fields_lowercased_accept_encoding_unordered() -> None:
    fields = (b"accept-encoding", b"accept-language")
    a = secondary_key(fields, h("Accept-Encoding: GZIP, br", "Accept-Language: EN-us"))
    b = secondary_key(fields, h("accept-language: en-US", "accept-encoding: br,gzip"))
    assert a == b


def test_rfc9111_4_1_other_values_keep_case_and_order() -> None:
    fields = (b"user-agent",)
    assert secondary_key(fields, h("User-Agent: A")) != secondary_key(fields, h("User-Agent: a"))
    fields = (b"accept",)
    assert secondary_key(fields, h("Accept: a, b")) != secondary_key(fields, h("Accept: b, a"))


def test_rfc9111_4_1_only_named_fields_count() -> None:
    key = vary_key([b"Accept-Encoding"], h("Accept-Encoding: gzip", "User-Agent: x"))
    assert key == ((b"accept-encoding", b"gzip"),)
    assert vary_key([], h("Accept-Encoding: gzip")) == ()


def test_rfc9111_4_1_variant_bytes_are_stable_and_distinguish_absent() -> None:
    assert variant(()) == b""
    assert variant(((b"a", b"x"), (b"b", None))) == b"a:x\nb"
    assert variant(((b"b", None),)) != variant(((b"b", b""),))


# -- HTTP dates (RFC 9110 5.6.7) --------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [IMF, "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994", "  Sun,  06 nov 1994 08:49:37 GMT "],
)
def test_rfc9110_5_6_7_three_date_formats(value: str) -> None:
    assert http_date(value.encode()) == IMF_T


@pytest.mark.parametrize(
    "value",
    ["0", "-1", "", "yesterday", "Sun, 06 Nov 1994 08:49:37 +0000", "Sun, 06 Nov 94 08:49:37 GMT",
     "Sun, 30 Feb 1994 08:49:37 GMT", "Sun, 06 Nov 1994 24:00:00 GMT", "Sun, 06 Foo 1994 08:49:37 GMT",
     "Sun, 06 Nov 1994 8:49:37 GMT", "Sun, 006 Nov 1994 08:49:37 GMT", "Sun, 06 Nov 0000 08:49:37 GMT",
     "Sunday, 06-Nov-1994 08:49:37 GMT", "Sun Nov 6 08:49 1994", "Sun, 06 Nov 1994 08:49:37 GMT extra"],
)  # fmt: skip
def test_rfc9110_5_6_7_invalid_dates_are_none(value: str) -> None:
    assert http_date(value.encode()) is None


@pytest.mark.parametrize(
    "value",
    [IMF, "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994", " Sun, 06 Nov 1994 08:49:37 GMT "],
)
def test_rfc9110_5_6_7_strict_dates_in_each_format(value: str) -> None:
    assert http_date_strict(value.encode()) == IMF_T


@pytest.mark.parametrize(
    "value",
    ["Sun,  06 Nov 1994 08:49:37 GMT", "Sun, 06 nov 1994 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 gmt",
     "sun, 06 Nov 1994 08:49:37 GMT", "Sun, 6 Nov 1994 08:49:37 GMT", "Sun Nov 6 08:49:37 1994",
     "Sunday,  06-Nov-94 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 UTC", "Sun,\t06 Nov 1994 08:49:37 GMT",
     "Sun, 06 Nov 1994 08:49:37", "Sun, 30 Feb 1994 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 GMT\x00"],
)  # fmt: skip
def test_rfc9110_5_6_7_strict_dates_refuse_near_misses(value: str) -> None:
    assert http_date_strict(value.encode()) is None


def test_rfc9110_5_6_7_rfc850_two_digit_year_pivot() -> None:
    assert http_date(b"Thursday, 01-Jan-70 00:00:00 GMT") == 0.0
    assert http_date(b"Monday, 01-Jan-69 00:00:00 GMT") == http_date(b"Tue, 01 Jan 2069 00:00:00 GMT")


def test_rfc9110_5_6_7_leap_day_and_wrong_weekday_tolerated() -> None:
    assert http_date(b"Thu, 29 Feb 2024 00:00:00 GMT") is not None
    assert http_date(b"Mon, 06 Nov 1994 08:49:37 GMT") == IMF_T


def test_rfc9110_5_6_7_format_is_imf_fixdate_and_round_trips() -> None:
    assert format_http_date(IMF_T) == IMF.encode()
    assert format_http_date(IMF_T + 0.9) == IMF.encode()
    assert format_http_date(0) == b"Thu, 01 Jan 1970 00:00:00 GMT"
    assert format_http_date(-5) == b"Thu, 01 Jan 1970 00:00:00 GMT"
    assert http_date(format_http_date(T0)) == T0


# -- validation (4.3) -----------------------------------------------------------------------------------


def test_4_3_1_conditional_headers_from_validators() -> None:
    stored = h('ETag: "v1"', f"Last-Modified: {IMF}")
    assert conditional_headers(stored) == [(b"If-None-Match", b'"v1"'), (b"If-Modified-Since", IMF.encode())]
    assert conditional_headers(h("Last-Modified: junk")) == []
    assert conditional_headers(h()) == []


def test_4_3_1_validation_request_replaces_client_conditionals() -> None:
    req = h("Accept: */*", 'If-None-Match: "client"', "If-Modified-Since: x", "Range: bytes=0-1")
    out = validation_headers(req, h('ETag: W/"v1"'))
    assert out == [(b"Accept", b"*/*"), (b"Range", b"bytes=0-1"), (b"If-None-Match", b'W/"v1"')]


def test_4_3_4_304_replaces_fields_but_not_content_length() -> None:
    stored = h(
        'ETag: "v1"', "Content-Length: 10", "Cache-Control: max-age=1", "X-A: old", "X-A: old2", "X-B: b"
    )
    got = update_from_304(
        stored, h('ETag: "v1"', "Content-Length: 0", "Cache-Control: max-age=99", "X-A: new")
    )
    assert got == h("Content-Length: 10", "X-B: b", 'ETag: "v1"', "Cache-Control: max-age=99", "X-A: new")


def test_4_3_4_304_for_another_representation_selects_nothing() -> None:
    stored = h('ETag: "v1"', f"Last-Modified: {IMF}")
    assert update_from_304(stored, h('ETag: "v2"')) is None
    assert update_from_304(h(), h('ETag: "v2"')) is None
    assert update_from_304(stored, h(f"Last-Modified: {date(T0)}")) is None
    assert update_from_304(stored, h('ETag: W/"v1"')) is not None  # weak comparison
    assert update_from_304(stored, h(f"Last-Modified: {IMF}")) is not None
    assert update_from_304(stored, h("X-New: 1")) == stored + h("X-New: 1")


def test_rfc9110_13_2_2_if_none_match_weak_comparison() -> None:
    stored = h('ETag: W/"v1"')
    assert client_conditional_304("GET", h('If-None-Match: "v1"'), 200, stored)
    assert client_conditional_304("HEAD", h('If-None-Match: "x", W/"v1"'), 200, stored)
    assert client_conditional_304("GET", h("If-None-Match: *"), 200, stored)
    assert not client_conditional_304("GET", h('If-None-Match: "v2"'), 200, stored)
    assert not client_conditional_304("GET", h('If-None-Match: "v1"'), 200, h())


def test_rfc9110_8_8_3_etags_may_contain_commas() -> None:
    stored = h('ETag: "a,b"')
    assert client_conditional_304("GET", h('If-None-Match: "x", "a,b"'), 200, stored)
    assert not client_conditional_304("GET", h('If-None-Match: "a"'), 200, stored)


def test_rfc9110_13_2_2_if_none_match_hides_if_modified_since() -> None:
    stored = h('ETag: "v1"', f"Last-Modified: {IMF}")
    assert not client_conditional_304(
        "GET", h('If-None-Match: "v2"', f"If-Modified-Since: {IMF}"), 200, stored
    )


def test_rfc9110_13_1_3_if_modified_since() -> None:
    stored = h(f"Last-Modified: {IMF}")
    assert client_conditional_304("GET", h(f"If-Modified-Since: {IMF}"), 200, stored)
    assert client_conditional_304("GET", h(f"If-Modified-Since: {date(IMF_T + 5)}"), 200, stored)
    assert not client_conditional_304("GET", h(f"If-Modified-Since: {date(IMF_T - 5)}"), 200, stored)
    assert not client_conditional_304("GET", h("If-Modified-Since: garbage"), 200, stored)
    two = h(f"If-Modified-Since: {IMF}", f"If-Modified-Since: {IMF}")
    assert not client_conditional_304("GET", two, 200, stored)


def test_4_3_2_if_modified_since_falls_back_to_date_then_receipt() -> None:
    ims = h(f"If-Modified-Since: {date(T0)}")
    assert client_conditional_304("GET", ims, 200, h(f"Date: {date(T0 - 5)}"))
    assert not client_conditional_304("GET", ims, 200, h(f"Date: {date(T0 + 5)}"))
    assert client_conditional_304("GET", ims, 200, h(), received=T0)
    assert not client_conditional_304("GET", ims, 200, h())


def test_rfc9110_13_2_1_conditionals_only_for_get_head_on_2xx() -> None:
    stored = h('ETag: "v1"')
    assert not client_conditional_304("POST", h('If-None-Match: "v1"'), 200, stored)
    assert not client_conditional_304("GET", h('If-None-Match: "v1"'), 404, stored)
    assert not client_conditional_304("GET", h('If-Match: "v2"'), 200, stored)


def test_rfc9110_15_4_5_not_modified_fields() -> None:
    stored = h("Date: d", 'ETag: "v"', "Content-Type: text/html", "Cache-Control: max-age=1", "Vary: Accept",
               "Expires: e", "Content-Location: /x", "Content-Length: 5")  # fmt: skip
    kept = not_modified_headers(stored)
    assert [n for n, _ in kept] == [
        b"Date",
        b"ETag",
        b"Cache-Control",
        b"Vary",
        b"Expires",
        b"Content-Location",
    ]


# -- invalidation (4.4) --------------------------------------------------------------------------------

TARGET = "http://example.com/items"


def test_4_4_unsafe_method_invalidates_target_and_same_origin_locations() -> None:
    resp = h("Location: /items/7", "Content-Location: http://EXAMPLE.com:80/items/7/v#x")
    assert invalidations("POST", 201, TARGET, resp) == [
        TARGET,
        "http://example.com/items/7",
        "http://EXAMPLE.com:80/items/7/v",
    ]


def test_4_4_other_origins_are_never_invalidated() -> None:
    resp = h("Location: http://other.example/items", "Content-Location: https://example.com/items")
    assert invalidations("PUT", 200, TARGET, resp) == [TARGET]


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "TRACE"])
def test_4_4_safe_methods_invalidate_nothing(method: str) -> None:
    assert invalidations(method, 200, TARGET, h("Location: /x")) == []


@pytest.mark.parametrize(
    ("status", "n"), [(200, 1), (204, 1), (303, 1), (400, 0), (404, 0), (500, 0), (100, 0)]
)
def test_4_4_only_non_error_statuses_invalidate(status: int, n: int) -> None:
    assert len(invalidations("DELETE", status, TARGET, [])) == n


def test_4_4_unknown_methods_are_unsafe_and_bad_locations_ignored() -> None:
    resp = [(b"Location", b"\xff\xfe"), (b"Location", b"http://[::1/"), (b"Location", TARGET.encode())]
    assert invalidations("PURGE", 200, TARGET, resp) == [TARGET]
