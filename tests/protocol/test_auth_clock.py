"""Proxy auth at the connection edge runs on the connections' clock (`conn/clock.py`):
the failure limiter's lockout, the credential cache and the look at the user files are
moved by the fake clock, without sleeping.  The bcrypt check still runs in the worker's
thread pool, so the tests wait for its answer (a condition, polled with a deadline)."""

from __future__ import annotations

import base64
from pathlib import Path

import bcrypt

from ferryman.config.compile import compile_config
from ferryman.config.load import load_text, normalise
from ferryman.conn.engine import Engine
from tests.helpers.fakeclock import FakeClock
from tests.helpers.wait import wait_for_async
from tests.protocol.test_downstream import FakeTransport, client, park_upstream


def users_file(path: Path, users: dict[str, bytes]) -> None:
    lines = (f"{u}:{bcrypt.hashpw(p, bcrypt.gensalt(4)).decode()}\n" for u, p in users.items())
    path.write_text("".join(lines))


def auth_engine(tmp: Path, clock: FakeClock, **auth: str) -> Engine:
    users_file(tmp / "users", {"alice": b"wonderland"})
    extra = "".join(f", {k}: {v}" for k, v in auth.items())
    text = f"forward: {{auth: {{htpasswd: {tmp / 'users'}{extra}}}}}\n"
    eng = Engine(compile_config(normalise(load_text(text, "<test>")), "<test>"), clock=clock)
    eng.log.enabled = False
    return eng


def get(password: bytes) -> bytes:
    cred = base64.b64encode(b"alice:" + password)
    return (b"GET http://origin.test/a HTTP/1.1\r\nHost: origin.test\r\n"
            b"Proxy-Authorization: Basic %s\r\n\r\n" % cred)


async def answer(tr: FakeTransport) -> bytes:
    async def some() -> bytes | None:
        return tr.take() or None

    return await wait_for_async(some, timeout=5.0, what="an answer")


async def test_lockout_ends_when_the_fake_clock_says_so(tmp_path: Path) -> None:
    clock = FakeClock()
    eng = auth_engine(tmp_path, clock, max_failures="1", lockout="30s")
    try:
        ds, tr = client(eng)
        ds.data_received(get(b"wrong"))
        assert (await answer(tr)).startswith(b"HTTP/1.1 429 ")  # the first failure locks out
        ds, tr = client(eng)
        ds.data_received(get(b"wonderland"))
        assert tr.take().startswith(b"HTTP/1.1 429 ")  # locked: no check at all
        clock.advance(29)
        ds, tr = client(eng)
        ds.data_received(get(b"wonderland"))
        assert tr.take().startswith(b"HTTP/1.1 429 ")
        clock.advance(2)  # past the lockout on the connections' clock
        _, up_tr = park_upstream(eng)
        ds, tr = client(eng)
        ds.data_received(get(b"wonderland"))

        async def sent() -> bytes | None:
            return up_tr.take() or None

        assert (await wait_for_async(sent, timeout=5.0)).startswith(b"GET /a HTTP/1.1\r\n")
        assert tr.take() == b""
    finally:
        eng.close()


async def test_user_files_are_looked_at_on_the_fake_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    eng = auth_engine(tmp_path, clock, reload_check="60s")
    try:
        rt = eng.auth
        first = rt.current
        users_file(tmp_path / "users", {"alice": b"wonderland", "bob": b"builder"})
        clock.advance(59)  # the engine ticks each second: not due yet
        assert rt.current is first and rt._watch is None
        clock.advance(1.5)

        async def reloaded() -> bool:
            return rt.current is not first

        await wait_for_async(reloaded, timeout=5.0, what="the users read again")
        assert rt.current is not None and rt.current.db.get("bob") is not None
    finally:
        eng.close()
