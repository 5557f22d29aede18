"""RFC 9213 targeted fields read as Cache-Control (pure): Structured Field Dictionary syntax,
value types, and what makes a field ignored (section numbers are RFC 9213's)."""

from __future__ import annotations

import pytest

from ferryman.pipeline.cache.targeted import as_cache_control, targeted_directives


@pytest.mark.parametrize(
    ("value", "cc"),
    [(b"max-age=60", b"max-age=60"),
     (b"max-age=60, private", b"max-age=60, private"),
     (b'no-cache="set-cookie, x-a"', b'no-cache="set-cookie, x-a"'),
     (b"no-store=?0, max-age=5", b"max-age=5"),  # Boolean false: absent
     (b"max-age=60;foo=1", b"max-age=60"),  # parameters ignored
     (b"max-age=1.5", b"max-age=1.5"),  # a Decimal, passed on: the policy reads it as stale
     (b"must-revalidate, s-maxage=10", b"must-revalidate, s-maxage=10"),
     (b"none", b"none"),  # RFC 9213 3.1's example: non-empty, no directive the cache knows
     (b"max-age=:YWJj:", b"max-age=?")],  # a byte sequence is no directive value
)  # fmt: skip
def test_2_1_dictionary_members_become_directives(value: bytes, cc: bytes) -> None:
    assert as_cache_control([value]) == cc


def test_2_1_field_lines_combine_into_one_dictionary() -> None:
    assert as_cache_control([b"max-age=60", b"private"]) == b"max-age=60, private"


@pytest.mark.parametrize(
    "value", [b"", b"   ", b"max-age=60,", b"Max-Age=60", b"max-age=60 private", b'no-cache="unterminated',
              b"=5", b"max-age=-"],
)  # fmt: skip
def test_2_1_empty_or_unparsable_field_is_ignored(value: bytes) -> None:
    assert as_cache_control([value]) is None


def test_2_2_first_valid_non_empty_field_of_the_target_list_wins() -> None:
    targets = (b"ferryman-cache-control", b"cdn-cache-control")
    both = [(b"CDN-Cache-Control", b"max-age=600"), (b"Ferryman-Cache-Control", b"max-age=5")]
    assert targeted_directives(both, targets) == b"max-age=5"
    broken_own = [(b"CDN-Cache-Control", b"max-age=600"), (b"Ferryman-Cache-Control", b"max-age=5,")]
    assert targeted_directives(broken_own, targets) == b"max-age=600"
    assert targeted_directives([(b"Cache-Control", b"max-age=1")], targets) is None
    assert targeted_directives(both, ()) is None  # not on the target list: no effect
