"""RFC 9112 framing rules, called directly (no parser involved)."""

from __future__ import annotations

import pytest

from ferryman.errors import ClientProtocolError, NotImplementedByProxy, UpstreamProtocolError
from ferryman.http1.events import Framing
from ferryman.http1.framing import (
    connection_tokens,
    header_values,
    request_framing,
    response_framing,
)

# -- connection_tokens ---------------------------------------------------------


def test_connection_tokens_split_strip_lowercase_and_merge() -> None:
    assert connection_tokens([b"Keep-Alive, Upgrade", b" X-Foo ,,close"]) == frozenset(
        {b"keep-alive", b"upgrade", b"x-foo", b"close"}
    )


def test_connection_tokens_ignore_empty_elements() -> None:
    assert connection_tokens([b"", b" , ,"]) == frozenset()


# -- request_framing -------------------------------------------------------------


def test_request_without_length_or_te_has_no_body() -> None:
    assert request_framing("1.1", [], []) == (Framing.NONE, 0)
    assert request_framing("1.0", [], []) == (Framing.NONE, 0)


def test_request_content_length() -> None:
    assert request_framing("1.1", [], [b"42"]) == (Framing.LENGTH, 42)


def test_request_content_length_zero_keeps_length_framing() -> None:
    assert request_framing("1.1", [], [b"0"]) == (Framing.LENGTH, 0)


@pytest.mark.parametrize(
    "cl",
    [
        pytest.param([b"5", b"5"], id="repeated-field"),
        pytest.param([b"5, 5"], id="list"),
        pytest.param([b" 5 ", b"5,5"], id="mixed-whitespace"),
    ],
)
def test_request_identical_content_lengths_collapse(cl: list[bytes]) -> None:
    assert request_framing("1.1", [], cl) == (Framing.LENGTH, 5)


@pytest.mark.parametrize(
    "cl",
    [
        pytest.param([b"5", b"6"], id="conflicting-fields"),
        pytest.param([b"5, 6"], id="conflicting-list"),
        pytest.param([b"abc"], id="not-a-number"),
        pytest.param([b"-1"], id="negative"),
        pytest.param([b"+1"], id="plus-sign"),
        pytest.param([b"1.0"], id="decimal"),
        pytest.param([b""], id="empty"),
        pytest.param([b"0x10"], id="hex"),
        pytest.param([b"1" * 19], id="too-many-digits"),
    ],
)
def test_request_bad_content_length(cl: list[bytes]) -> None:
    with pytest.raises(ClientProtocolError):
        request_framing("1.1", [], cl)


def test_request_content_length_max_digits_is_accepted() -> None:
    assert request_framing("1.1", [], [b"9" * 18]) == (Framing.LENGTH, 10**18 - 1)


@pytest.mark.parametrize("te", [[b"chunked"], [b"Chunked"], [b" chunked "]])
def test_request_chunked(te: list[bytes]) -> None:
    assert request_framing("1.1", te, []) == (Framing.CHUNKED, -1)


def test_request_te_and_cl_together_is_rejected() -> None:
    with pytest.raises(ClientProtocolError):
        request_framing("1.1", [b"chunked"], [b"3"])


def test_request_te_in_http10_is_rejected() -> None:
    with pytest.raises(ClientProtocolError):
        request_framing("1.0", [b"chunked"], [])


@pytest.mark.parametrize(
    "te",
    [
        pytest.param([b"gzip"], id="gzip"),
        pytest.param([b"identity"], id="identity"),
        pytest.param([b"chunked, gzip"], id="chunked-not-last"),
        pytest.param([b"chunked", b"gzip"], id="chunked-not-last-split"),
        pytest.param([b""], id="empty"),
        pytest.param([b" , "], id="only-commas"),
    ],
)
def test_request_te_not_ending_in_chunked_is_rejected(te: list[bytes]) -> None:
    with pytest.raises(ClientProtocolError):
        request_framing("1.1", te, [])


@pytest.mark.parametrize("te", [[b"gzip, chunked"], [b"gzip", b"chunked"]])
def test_request_other_codings_before_chunked_are_not_implemented(te: list[bytes]) -> None:
    with pytest.raises(NotImplementedByProxy) as info:
        request_framing("1.1", te, [])
    assert info.value.status == 501


# -- response_framing ------------------------------------------------------------


@pytest.mark.parametrize("status", [100, 103, 199, 204, 304])
def test_response_no_body_statuses(status: int) -> None:
    assert response_framing(status, "GET", [b"chunked"], []) == (Framing.NONE, 0)
    assert response_framing(status, "GET", [], []) == (Framing.NONE, 0)


def test_response_no_body_status_keeps_validated_content_length() -> None:
    assert response_framing(304, "GET", [], [b"1234"]) == (Framing.NONE, 1234)


def test_response_to_head_has_no_body_but_reports_length() -> None:
    assert response_framing(200, "HEAD", [], [b"10"]) == (Framing.NONE, 10)
    assert response_framing(200, "HEAD", [b"chunked"], []) == (Framing.NONE, 0)


@pytest.mark.parametrize(
    ("status", "method"), [(304, "GET"), (200, "HEAD"), (100, "GET")]
)
def test_response_no_body_still_rejects_garbage_content_length(status: int, method: str) -> None:
    with pytest.raises(UpstreamProtocolError):
        response_framing(status, method, [], [b"1, 2"])


def test_response_chunked() -> None:
    assert response_framing(200, "GET", [b"Chunked"], []) == (Framing.CHUNKED, -1)


def test_response_content_length() -> None:
    assert response_framing(200, "GET", [], [b"7"]) == (Framing.LENGTH, 7)
    assert response_framing(200, "POST", [], [b"7", b"7"]) == (Framing.LENGTH, 7)


def test_response_close_delimited_when_unframed() -> None:
    assert response_framing(200, "GET", [], []) == (Framing.CLOSE, -1)


def test_response_te_and_cl_together_is_rejected() -> None:
    with pytest.raises(UpstreamProtocolError):
        response_framing(200, "GET", [b"chunked"], [b"3"])


@pytest.mark.parametrize("te", [[b"gzip"], [b"gzip, chunked"], [b"chunked, chunked"]])
def test_response_unsupported_transfer_coding(te: list[bytes]) -> None:
    with pytest.raises(UpstreamProtocolError):
        response_framing(200, "GET", te, [])


@pytest.mark.parametrize("cl", [[b"3", b"4"], [b"x"], [b"-3"]])
def test_response_bad_content_length(cl: list[bytes]) -> None:
    with pytest.raises(UpstreamProtocolError):
        response_framing(200, "GET", [], cl)


# -- header_values -----------------------------------------------------------------


def test_header_values_is_case_insensitive_and_ordered() -> None:
    headers = [(b"Via", b"1"), (b"X", b"y"), (b"VIA", b"2"), (b"via", b"3")]
    assert header_values(headers, b"via") == [b"1", b"2", b"3"]
    assert header_values(headers, b"missing") == []
