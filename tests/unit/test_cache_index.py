"""The per-process entry index: variants found by their selecting values, and bounded."""

from __future__ import annotations

from dataclasses import dataclass

from ferryman.http1.events import Headers
from ferryman.pipeline.cache import policy
from ferryman.pipeline.cache.index import EntryIndex, selecting_fields, variant_bytes


@dataclass
class S:
    entry: policy.Entry
    variant: bytes


def stored(req: Headers, vary: bytes | None = None, t: float = 100.0) -> S:
    resp: Headers = [(b"Cache-Control", b"max-age=60")] + ([(b"Vary", vary)] if vary else [])
    entry = policy.make_entry(200, req, resp, t, t)
    return S(entry, variant_bytes(entry.vary))


def ua(n: int) -> Headers:
    return [(b"User-Agent", b"agent/%d" % n), (b"Accept", b"*/*")]


def test_a_variant_is_found_by_its_selecting_values_among_thousands() -> None:
    index: EntryIndex[S] = EntryIndex(100, 5_000)
    for n in range(3_000):
        index.remember(b"k", stored(ua(n), b"User-Agent"))
    assert len(index.all(b"k")) == 3_000
    (entry,) = index.select(b"k", ua(1234))
    assert entry.vary == ((b"user-agent", b"agent/1234"),)
    assert policy.lookup([entry], "GET", ua(1234), 110.0).outcome is policy.Outcome.FRESH
    found = index.find(b"k", entry)
    assert found is not None and found.entry is entry
    # no match: one non-matching entry, so that lookup says vary-miss (not uri-miss)
    other = index.select(b"k", ua(99_999))
    assert len(other) == 1 and policy.lookup(other, "GET", ua(99_999), 110.0).fwd == "vary-miss"
    assert index.select(b"nothing", ua(1)) == []


def test_variants_per_key_are_capped_least_recently_used_first() -> None:
    index: EntryIndex[S] = EntryIndex(100, 3)
    for n in range(3):
        index.remember(b"k", stored(ua(n), b"User-Agent"))
    assert index.select(b"k", ua(0))  # agent/0 used: agent/1 is now the oldest
    index.remember(b"k", stored(ua(3), b"User-Agent"))
    assert sorted(s.entry.vary[0][1] for s in index.all(b"k")) == [b"agent/0", b"agent/2", b"agent/3"]


def test_keys_are_capped_and_the_ones_let_go_are_reported() -> None:
    index: EntryIndex[S] = EntryIndex(2, 32)
    assert index.remember(b"a", stored([])) == []
    assert index.remember(b"b", stored([])) == []
    assert index.select(b"a", [])  # a used: b goes first
    assert index.remember(b"c", stored([])) == [b"b"]
    assert b"b" not in index and b"a" in index and len(index) == 2


def test_plain_and_varying_responses_under_one_key() -> None:
    index: EntryIndex[S] = EntryIndex(10, 32)
    plain = stored([], None, t=100.0)
    index.remember(b"k", plain)
    assert index.select(b"k", ua(1)) == [plain.entry]
    index.remember(b"k", stored(ua(1), b"User-Agent", t=200.0))  # the URL starts to vary
    got = index.select(b"k", ua(1))
    assert len(got) == 2 and policy.lookup(got, "GET", ua(1), 210.0).entry is got[-1] is not plain.entry
    index.drop(b"k", variant_bytes(((b"user-agent", b"agent/1"),)))
    assert index.select(b"k", ua(1)) == [plain.entry]
    index.drop(b"k", b"")
    assert b"k" not in index


def test_a_store_keeps_only_the_request_fields_vary_names() -> None:
    s = stored(ua(7), b"User-Agent")
    assert selecting_fields(s.entry, ua(7) + [(b"Cookie", b"secret")]) == ((b"User-Agent", b"agent/7"),)
    assert selecting_fields(stored(ua(7)).entry, ua(7)) == ()
