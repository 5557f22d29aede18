"""Fill bookkeeping (conn/fill.py): the memory buffer kept for followers, the variant a
follower may share, and the states that send followers elsewhere."""

from __future__ import annotations

import pytest

from ferryman.conn import fill as fill_mod
from ferryman.conn.fill import Budget, Fill


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


def test_all_fills_together_stay_within_the_budget_and_give_it_back() -> None:
    budget = Budget(limit=10)
    a, b = Fill(b"a", 100, budget), Fill(b"b", 100, budget)
    a.append(b"123456")
    b.append(b"123456")  # over the budget: not kept (a follower reads it from the store)
    assert a.buffered == 6 and b.buffered == 0 and budget.used == 6
    a.finish()
    a.release()
    a.release()
    assert budget.used == 0 and a.chunks == [b"123456"]  # followers still streaming keep theirs
    b.fail()
    assert budget.used == 0
    c = Fill(b"c", 100, budget)
    c.append(b"1234567890")
    assert c.buffered == 10 and budget.used == 10
