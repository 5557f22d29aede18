"""The error taxonomy's ``origin_failure`` flag: which errors say the origin is down or
failing, so that a stale entry may answer them (RFC 5861 stale-if-error), and which are
ferryman's own refusals, client faults or internal errors, which never may."""

from __future__ import annotations

import pytest

from ferryman import errors
from ferryman.errors import FerrymanError
from ferryman.pipeline.cache.policy import ERROR_STATUSES
from ferryman.pipeline.cache.store import CacheEntryCorrupt

ORIGIN_FAILURES = {
    errors.UpstreamConnectError,
    errors.UpstreamProtocolError,
    errors.UpstreamClosed,
    errors.DnsError,  # the name does not resolve: the origin is unreachable
    errors.UpstreamTimeout,
    errors.NoHealthyUpstream,
    errors.UpstreamFull,
}


def every_error() -> set[type[FerrymanError]]:
    seen: set[type[FerrymanError]] = set()
    todo: list[type[FerrymanError]] = [FerrymanError]
    while todo:
        cls = todo.pop()
        seen.add(cls)
        todo.extend(cls.__subclasses__())
    return seen


def test_exactly_the_upstream_failures_are_origin_failures() -> None:
    assert CacheEntryCorrupt in every_error()  # subclasses outside errors.py are walked too
    flagged = {cls for cls in every_error() if cls.origin_failure}
    assert flagged == ORIGIN_FAILURES


@pytest.mark.parametrize("cls", sorted(ORIGIN_FAILURES, key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_origin_failures_are_upstream_with_a_stale_if_error_status(cls: type[FerrymanError]) -> None:
    assert cls.source == "upstream" and cls.status in ERROR_STATUSES


@pytest.mark.parametrize(
    "cls",
    [errors.Forbidden, errors.LoopDetected, errors.AuthBusy, errors.ClientProtocolError, FerrymanError],
    ids=lambda c: c.__name__,
)
def test_refusals_client_faults_and_internal_errors_are_not(cls: type[FerrymanError]) -> None:
    assert not cls.origin_failure
    assert not cls("x").origin_failure


def test_every_policy_refusal_is_not_an_origin_failure() -> None:
    refusals = [cls for cls in every_error() if cls.source == "policy"]
    assert errors.LoopDetected in refusals and errors.Forbidden in refusals
    assert not any(cls.origin_failure for cls in refusals)
