"""The reload queue of `Server` (issue 7, item 7), with the reload itself stubbed: no process,
no file.  A request during a reload schedules exactly one more; several merge into it."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ferryman.config.compile import build_plan
from ferryman.config.reload import ConfigSource
from ferryman.server.lifecycle import Server


class StubbedServer(Server):
    def __init__(self) -> None:
        super().__init__(ConfigSource(), build_plan(None))
        self.engine = object()  # type: ignore[assignment]  # only "started" matters here
        self.runs = 0
        self.gates: list[asyncio.Event] = []
        self.results: list[bool] = []

    async def _reload_once(self) -> bool:
        self.runs += 1
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        return self.results.pop(0) if self.results else True


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_requests_during_a_reload_merge_into_one_more(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "ferryman")
    srv = StubbedServer()
    srv.results = [True, False]
    first = asyncio.ensure_future(srv.reload("SIGHUP"))
    await settle()
    assert srv.runs == 1
    second = asyncio.ensure_future(srv.reload("SIGHUP"))
    third = asyncio.ensure_future(srv.reload("POST /reload"))
    await settle()
    assert srv.runs == 1  # nothing runs twice at once
    srv.gates[0].set()
    await settle()
    assert first.done() and first.result() is True
    assert srv.runs == 2 and not second.done()  # exactly one more, for both
    srv.gates[1].set()
    await settle()
    assert second.result() is False and third.result() is False  # the result of the reload after them
    assert srv.runs == 2
    msgs = [r.getMessage() for r in caplog.records]
    assert "ferryman: SIGHUP during a reload: one more reload follows it" in msgs
    assert "ferryman: POST /reload during a reload: merged with the reload already due" in msgs


async def test_a_request_after_the_reload_ended_runs_a_new_one() -> None:
    srv = StubbedServer()
    first = asyncio.ensure_future(srv.reload())
    await settle()
    srv.gates[0].set()
    assert await first is True
    again = asyncio.ensure_future(srv.reload())
    await settle()
    assert srv.runs == 2
    srv.gates[1].set()
    assert await again is True


async def test_a_reload_that_raises_keeps_serving_and_the_queue_goes_on() -> None:
    srv = StubbedServer()
    calls = 0

    async def boom() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("broken")
        return True

    srv._reload_once = boom  # type: ignore[method-assign]
    assert await srv.reload() is False
    assert await srv.reload() is True
