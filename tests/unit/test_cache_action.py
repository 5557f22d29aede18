"""The cache's answer to a `CacheLookup`: two named values, compared by identity."""

from __future__ import annotations

from ferryman.pipeline.cache import action
from ferryman.pipeline.cache.action import PROXY, TAKEN, CacheAction


def test_two_values_and_the_module_constants_are_the_members() -> None:
    assert list(CacheAction) == [TAKEN, PROXY]
    assert TAKEN is CacheAction.TAKEN and PROXY is CacheAction.PROXY
    assert TAKEN is not PROXY
    assert set(action.__all__) == {"CacheAction", "TAKEN", "PROXY"}


def test_repr_names_the_value() -> None:
    assert repr(TAKEN) == "TAKEN" and repr(PROXY) == "PROXY"
    assert f"{[TAKEN, PROXY]}" == "[TAKEN, PROXY]"
