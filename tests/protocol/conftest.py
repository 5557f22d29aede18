"""The protocol tests' shared fixture: an engine on the default plan (no config file), its
access log off, closed after the test.  A module that needs another plan (a cache, a reverse
section, a fake clock) defines its own ``engine``, which takes precedence over this one."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ferryman.config.compile import build_plan
from ferryman.conn.engine import Engine


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    eng = Engine(build_plan(None))
    eng.log.enabled = False
    yield eng
    eng.close()
