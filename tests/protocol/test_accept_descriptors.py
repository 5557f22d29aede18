"""The descriptor check of each accept (conn/engine.py `accepting`): probed near the limit,
skipped far from it (the probe is two syscalls on every new connection)."""

from __future__ import annotations

import os

import pytest

from ferryman.conn.engine import Engine


def probes(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    seen: list[bool] = []

    def low() -> bool:
        seen.append(True)
        return False

    monkeypatch.setattr(engine, "descriptors_low", low)
    return seen


async def test_far_from_the_limit_no_descriptor_is_probed(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = probes(engine, monkeypatch)
    engine.fd_limit, engine.pool.max_total = 100_000, 25_000
    engine._probe_from = 100_000 - 6_250 - 12_500
    for _ in range(10):
        engine.accepting()
    assert seen == []


async def test_near_the_limit_every_accept_is_probed(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = probes(engine, monkeypatch)
    engine.pool.max_total = 256
    engine._probe_from = 1024 - 64 - 1024  # hard = soft = 1024: the slack is the whole limit
    for _ in range(3):
        engine.accepting()
    assert seen == [True] * 3


async def test_the_count_of_connections_brings_the_probe_back(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = probes(engine, monkeypatch)
    engine.pool.max_total = 1000
    engine._probe_from = 4000
    engine.accepting()
    assert seen == []
    engine.connections.update(object() for _ in range(1001))  # type: ignore[misc]
    engine.accepting()
    assert seen == [True]  # 3 x 1001 + 1000 >= 4000


async def test_a_real_probe_reads_the_lowest_free_descriptor(engine: Engine) -> None:
    fd = os.dup(0)
    os.close(fd)
    engine.fd_limit, engine.fd_reserve = fd + 10, 5
    assert not engine.descriptors_low()
    engine.fd_limit, engine.fd_reserve = fd + 1, 1
    assert engine.descriptors_low()
