"""Fill bookkeeping (conn/fill.py): the memory buffer kept for followers, the variant a
follower may share, and the states that send followers elsewhere."""

from __future__ import annotations

import pytest

from ferryman.conn import fill as fill_mod
from ferryman.conn.cache_follow import if_range_holds, range_of
from ferryman.conn.fill import Fill


def test_the_buffer_keeps_only_the_first_bytes_and_counts_every_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fill_mod, "BUFFER", 10)
    f = Fill(b"k", limit=100)
    for piece in (b"aaaa", b"bbbb", b"cccc", b"dd"):
        f.append(piece)
    assert f.chunks == [b"aaaa", b"bbbb"] and f.buffered == 8 and f.size == 14
    assert not f.failed


def test_a_fill_past_the_object_limit_fails_and_drops_its_buffer() -> None:
    f = Fill(b"k", limit=5)
    f.append(b"abc")
    f.append(b"def")
    assert f.failed and f.chunks == [] and f.stored is False and not f.usable


def test_a_follower_shares_a_fill_only_for_its_own_variant() -> None:
    f = Fill(b"k", limit=100)
    assert f.serves([(b"Accept-Encoding", b"gzip")])  # variant unknown until the head
    f.set_variant((b"accept-encoding",), ((b"accept-encoding", b"gzip"),), b"v")
    assert f.serves([(b"Accept-Encoding", b"gzip")])
    assert not f.serves([(b"Accept-Encoding", b"br")])
    f.set_variant(None, (), b"*")
    assert not f.serves([])  # Vary: * matches no other request


def test_invalidated_and_revalidated_fills_serve_no_new_follower() -> None:
    f = Fill(b"k", limit=100)
    f.invalidate()
    assert f.invalidated and not f.serves([])
    g = Fill(b"k", limit=100)
    g.revalidated(object())
    assert g.not_modified and g.done and g.stored is True and not g.serves([])


def test_range_helpers() -> None:
    assert range_of([(b"Range", b"bytes=0-9")], 100) == (0, 10)
    assert range_of([(b"Range", b"bytes=-5")], 100) == (95, 100)
    assert range_of([(b"Range", b"bytes=100-")], 100) == "bad"
    assert range_of([(b"Range", b"bytes=0-1,5-6")], 100) is None
    etag = [(b"ETag", b'"a"')]
    assert if_range_holds([], etag)
    assert if_range_holds([(b"If-Range", b'"a"')], etag)
    assert not if_range_holds([(b"If-Range", b'W/"a"')], etag)
