"""The one time source of `conn/`: what time it is, and deadlines (DESIGN 2.6, 2.12).

Every deadline and duration at the connection edge reads this clock, so the
protocol tests can drive them all with a fake one (tests/helpers/fakeclock.py),
without sleeping.  In production `LoopClock` reads `time.monotonic()` (precise:
the balancers time responses with it) and arms timers on the event loop, whose
own clock counts the same monotonic seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from time import monotonic
from typing import Any, Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer: ...


class LoopClock:
    """Monotonic seconds; timers as `call_later` handles of the running loop."""

    __slots__ = ("call_later",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.call_later: Callable[..., Timer] = loop.call_later

    # the builtin itself: no Python frame on the many reads per request
    time: Callable[[], float] = staticmethod(monotonic)
