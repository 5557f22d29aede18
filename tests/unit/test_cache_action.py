"""The cache's decisions at the connection edge: named values, compared by identity,
never a bool (request side `CacheAction`, response side `CacheReply`, a fill whose
client left `Orphan`)."""

from __future__ import annotations

from enum import Enum

from ferryman.pipeline.cache import action
from ferryman.pipeline.cache.action import (
    ABANDONED,
    ADOPTED,
    ANSWERS,
    PASSES,
    PROXY,
    TAKEN,
    CacheAction,
    CacheReply,
    Orphan,
)


def test_two_values_and_the_module_constants_are_the_members() -> None:
    assert list(CacheAction) == [TAKEN, PROXY]
    assert TAKEN is CacheAction.TAKEN and PROXY is CacheAction.PROXY
    assert TAKEN is not PROXY
    assert list(CacheReply) == [ANSWERS, PASSES]
    assert ANSWERS is CacheReply.ANSWERS and PASSES is CacheReply.PASSES
    assert list(Orphan) == [ADOPTED, ABANDONED]
    assert ADOPTED is Orphan.ADOPTED and ABANDONED is Orphan.ABANDONED
    assert set(action.__all__) == {
        "CacheAction", "TAKEN", "PROXY", "CacheReply", "ANSWERS", "PASSES", "Orphan", "ADOPTED", "ABANDONED",
    }


def test_the_three_kinds_never_compare_equal() -> None:
    kinds: list[type[Enum]] = [CacheAction, CacheReply, Orphan]
    members = [m for kind in kinds for m in kind]
    assert len({id(m) for m in members}) == len(members) == 6
    for a in members:
        for b in members:
            assert (a == b) is (a is b)


def test_repr_names_the_value() -> None:
    assert repr(TAKEN) == "TAKEN" and repr(PROXY) == "PROXY"
    assert f"{[TAKEN, PROXY]}" == "[TAKEN, PROXY]"
    assert f"{[ANSWERS, PASSES, ADOPTED, ABANDONED]}" == "[ANSWERS, PASSES, ADOPTED, ABANDONED]"
