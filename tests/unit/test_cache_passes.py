"""PassMarks (pipeline/cache/passes.py): which misses skip waiting for a fill in flight."""

from __future__ import annotations

from ferryman.pipeline.cache.passes import PASS_TTL, PassMarks


def passes(marks: PassMarks, key: bytes, now: float) -> bool:
    return marks.passing(key, now) is not None


def test_an_unmarked_key_waits_for_the_fill() -> None:
    assert not PassMarks().passing(b"k", 0.0)


def test_a_marked_key_passes_until_its_mark_expires() -> None:
    marks = PassMarks(ttl=120.0, probe_every=1000.0)
    marks.mark(b"k", 1000.0)
    assert passes(marks, b"k", 1000.0)
    assert passes(marks, b"k", 1119.9)
    assert not passes(marks, b"k", 1120.0)
    assert len(marks) == 0  # an expired mark is let go when seen


def test_one_miss_a_second_of_a_marked_key_is_examined() -> None:
    marks = PassMarks(ttl=120.0, probe_every=1.0)
    marks.mark(b"k", 0.0)
    assert [passes(marks, b"k", t) for t in (0.1, 0.5, 0.99)] == [True, True, True]
    assert not passes(marks, b"k", 1.0)  # the probe
    assert passes(marks, b"k", 1.01) and passes(marks, b"k", 1.9)  # the others still pass
    assert not passes(marks, b"k", 2.5)  # the next probe
    marks.mark(b"k", 2.6)  # the probe's answer was uncacheable again: renewed
    assert passes(marks, b"k", 3.0)


def test_a_stored_response_clears_the_mark() -> None:
    marks = PassMarks()
    marks.mark(b"k", 0.0)
    marks.clear(b"k")
    assert not passes(marks, b"k", 1.0)
    marks.clear(b"other")  # clearing what is not marked is fine


def test_marking_again_extends_the_mark() -> None:
    marks = PassMarks(ttl=10.0, probe_every=100.0)
    marks.mark(b"k", 0.0)
    marks.mark(b"k", 8.0)
    assert passes(marks, b"k", 15.0)


def test_the_table_is_bounded() -> None:
    marks = PassMarks(max_keys=100, probe_every=100.0)
    for i in range(1000):
        marks.mark(b"k%d" % i, 0.0)
        assert len(marks) <= 100
    assert passes(marks, b"k999", 1.0)  # the newest mark survives a restart of the table


def test_the_default_ttl_is_varnish_hit_for_pass() -> None:
    assert PASS_TTL == 120.0


def test_a_passing_miss_gets_the_cache_status_of_the_answer_that_marked_it() -> None:
    marks = PassMarks(probe_every=100.0)
    field = b'Cache-Status: ferryman; fwd=uri-miss; detail="no-store"\r\n'
    marks.mark(b"k", 0.0, field)
    assert marks.passing(b"k", 1.0) == field
