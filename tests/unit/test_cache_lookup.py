"""Answering a request from a stored entry (pipeline/cache/lookup.py): pure values.

Range and If-Range (RFC 9110 13.1.5, 14), the client's own validators (304), Age and
Cache-Status, and the validators ferryman puts on a revalidation (RFC 9111 4.3.1).
"""

from __future__ import annotations

from ferryman.pipeline.cache import policy
from ferryman.pipeline.cache.lookup import (
    Stored,
    answer,
    conditional,
    has_range,
    if_range_holds,
    range_of,
    status_field,
    validating,
)

T0 = 1_000_000.0
STORED = [(b"ETag", b'"a"'), (b"Last-Modified", b"Mon, 01 Jan 2024 00:00:00 GMT"),
          (b"Cache-Control", b"max-age=60"), (b"Age", b"7"), (b"Content-Type", b"text/plain")]
DROP = policy.DEFAULT_RULES.serve_drop


def _entry(status: int = 200) -> policy.Entry:
    return policy.make_entry(status, [], STORED, T0, T0)


def _fresh(entry: policy.Entry) -> policy.Lookup:
    return policy.Lookup(policy.Outcome.FRESH, entry, age=0.0, ttl=entry.lifetime)


def _answer(req: list[tuple[bytes, bytes]], method: str = "GET", status: int = 200, hit: bool = True,
            now: float = T0 + 10) -> tuple[list[tuple[bytes, bytes]], bytes, int, int, int]:
    e = _entry(status)
    return answer(method, req, e, 100, _fresh(e), hit, b"1.1 ferryman", DROP, now)


def test_range_of_one_range_suffix_past_the_end_and_several() -> None:
    assert range_of([(b"Range", b"bytes=0-9")], 100) == (0, 10)
    assert range_of([(b"Range", b"bytes=90-200")], 100) == (90, 100)
    assert range_of([(b"Range", b"bytes=-5")], 100) == (95, 100)
    assert range_of([(b"Range", b"bytes=-0")], 100) == "bad"
    assert range_of([(b"Range", b"bytes=100-")], 100) == "bad"
    assert range_of([(b"Range", b"bytes=0-1,5-6")], 100) is None  # several: the whole body
    assert range_of([(b"Range", b"items=0-1")], 100) is None
    assert range_of([(b"Range", b"bytes=x-1")], 100) is None
    assert range_of([], 100) is None


def test_if_range_needs_a_strong_match() -> None:
    etag = [(b"ETag", b'"a"')]
    assert if_range_holds([], etag)
    assert if_range_holds([(b"If-Range", b'"a"')], etag)
    assert not if_range_holds([(b"If-Range", b'"b"')], etag)
    assert not if_range_holds([(b"If-Range", b'W/"a"')], etag)
    assert not if_range_holds([(b"If-Range", b'"a"')], [(b"ETag", b'W/"a"')])
    lm = [(b"Last-Modified", b"Mon, 01 Jan 2024 00:00:00 GMT")]
    assert if_range_holds([(b"If-Range", b"Mon, 01 Jan 2024 00:00:00 GMT")], lm)
    assert not if_range_holds([(b"If-Range", b"Tue, 02 Jan 2024 00:00:00 GMT")], lm)
    assert not if_range_holds([(b"If-Range", b'"a"')], lm)  # no validator of that kind stored


def test_a_plain_get_gets_the_whole_entry_with_our_age_and_cache_status() -> None:
    hdrs, extra, status, start, end = _answer([])
    assert (status, start, end) == (200, 0, 100)
    names = [n.lower() for n, _ in hdrs]
    assert b"age" not in names and b"content-type" in names  # the stored Age goes (RFC 9111 4.2.3)
    assert extra == b"Age: 17\r\nCache-Status: ferryman; hit; ttl=43\r\n"  # stored Age 7 + 10 s resident


def test_a_miss_served_after_revalidation_says_fwd_stale() -> None:
    _, extra, _, _, _ = _answer([], hit=False)
    assert b"fwd=stale" in extra


def test_a_range_gets_206_with_its_content_range() -> None:
    _, extra, status, start, end = _answer([(b"Range", b"bytes=10-19")])
    assert (status, start, end) == (206, 10, 20)
    assert extra.endswith(b"Content-Range: bytes 10-19/100\r\n")


def test_a_range_past_the_end_gets_416() -> None:
    assert _answer([(b"Range", b"bytes=200-")])[2:] == (416, 0, 0)


def test_a_failing_if_range_or_a_non_200_entry_gets_the_whole_body() -> None:
    assert _answer([(b"Range", b"bytes=0-9"), (b"If-Range", b'"other"')])[2:] == (200, 0, 100)
    assert _answer([(b"Range", b"bytes=0-9")], status=203)[2:] == (203, 0, 100)


def test_a_range_on_head_is_ignored() -> None:
    # RFC 9110 14.2: a server MUST ignore Range for a method range handling is not defined
    # for, and only GET has it: a HEAD is answered as a HEAD without Range would be.
    assert _answer([(b"Range", b"bytes=10-19")], method="HEAD")[2:] == (200, 0, 100)
    assert _answer([(b"Range", b"bytes=200-")], method="HEAD")[2:] == (200, 0, 100)


def test_the_clients_own_validator_gets_304() -> None:
    hdrs, _, status, start, end = _answer([(b"If-None-Match", b'"a"')])
    assert (status, start, end) == (304, 0, 0)
    assert b"content-type" not in [n.lower() for n, _ in hdrs]  # RFC 9110 15.4.5
    assert _answer([(b"If-None-Match", b'"b"')])[2] == 200


def test_request_classifiers() -> None:
    assert has_range([(b"range", b"bytes=0-1")]) and not has_range([(b"If-Range", b'"a"')])
    assert conditional([(b"If-Modified-Since", b"x")]) and conditional([(b"RANGE", b"bytes=0-1")])
    assert not conditional([(b"Accept", b"*/*")])


def test_validating_puts_our_validators_in_place_of_the_clients() -> None:
    stale = Stored(_entry(), b"")
    out = validating([(b"Host", b"h"), (b"If-None-Match", b'"client"'), (b"If-Modified-Since", b"x")], stale)
    assert (b"Host", b"h") in out
    values = {n.lower(): v for n, v in out}
    assert values[b"if-none-match"] == b'"a"'
    assert values[b"if-modified-since"] == b"Mon, 01 Jan 2024 00:00:00 GMT"
    assert b'"client"' not in values.values()


def test_status_field_is_a_whole_header_line() -> None:
    line = status_field(False, "uri-miss", True, ttl=60)
    assert line == b"Cache-Status: ferryman; fwd=uri-miss; stored; ttl=60\r\n"
