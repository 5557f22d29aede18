"""The one bounded wait of the test suite: poll a condition against a deadline.

Nothing in the tests sleeps to synchronise. Where a test needs something that
happens elsewhere (a process listening, a log line flushed once per event-loop
turn, a counter in another thread), it waits for that condition with
`wait_for`, which returns as soon as the condition holds and fails the test
with a `TimeoutError` naming what it waited for when the deadline passes.
The conveniences below are `wait_for` over one kind of outside state.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

INTERVAL = 0.02


def wait_for(
    cond: Callable[[], T | None],
    timeout: float = 10.0,
    what: str | Callable[[], str] = "",
    interval: float = INTERVAL,
) -> T:
    """Call ``cond`` until it returns something truthy, at most ``timeout`` seconds; return that.

    ``what`` names the condition in the failure (a callable is called then, e.g. to show a log).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            name = what() if callable(what) else what
            raise TimeoutError(f"not within {timeout}s: {name or getattr(cond, '__name__', cond)}")
        time.sleep(interval)


async def wait_for_async(
    cond: Callable[[], Awaitable[T | None]],
    timeout: float = 10.0,
    what: str | Callable[[], str] = "",
    interval: float = INTERVAL,
) -> T:
    """`wait_for` inside an event loop: ``await cond()`` until truthy, sleeping between tries."""
    deadline = time.monotonic() + timeout
    while True:
        value = await cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            name = what() if callable(what) else what
            raise TimeoutError(f"not within {timeout}s: {name or getattr(cond, '__name__', cond)}")
        await asyncio.sleep(interval)


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 10.0,
              host: str = "127.0.0.1") -> None:
    """Until something accepts on ``host:port``; fail at once if ``proc`` exited first."""

    def accepts() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            return False

    wait_for(accepts, timeout, f"something listening on {host}:{port}")


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON lines of a log (a line still being written is skipped)."""
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def wait_log(read: Callable[[], str], pred: Callable[[dict[str, Any]], bool],
             timeout: float = 10.0) -> dict[str, Any]:
    """The first line of a JSON log (``read()`` returns its text, e.g. ``fm.access_log``)
    matching ``pred``, waiting for the flush."""

    def find() -> dict[str, Any] | None:
        return next((e for e in json_lines(read()) if pred(e)), None)

    return wait_for(find, timeout, lambda: f"a matching log line in:\n{read()[-2000:]}")


def wait_text(read: Callable[[], str], needle: str, timeout: float = 10.0) -> str:
    """``read()`` once it contains ``needle`` (e.g. ``fm.stderr``)."""

    def find() -> str | None:
        text = read()
        return text if needle in text else None

    return wait_for(find, timeout, lambda: f"{needle!r} in:\n{read()[-2000:]}")
