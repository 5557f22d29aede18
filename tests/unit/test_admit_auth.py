"""The proxy-auth phase (pipeline/admit/auth.py): decisions for every kind of
Proxy-Authorization, without sockets; usage per user; parent URLs with userinfo."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from time import monotonic
from types import SimpleNamespace

import bcrypt
import pytest

from ferryman.config.compile_forward_control import compile_auth
from ferryman.config.hostport import split_proxy_url
from ferryman.conn.auth import AuthRuntime
from ferryman.http1.events import Framing, RequestHead
from ferryman.observe.usage import OTHERS, UserUsage
from ferryman.pipeline.admit import auth as auth_phase
from ferryman.pipeline.admit.credentials import Authenticator, CredentialCache, FailureLimiter, Verify
from ferryman.pipeline.admit.htpasswd import PasswordEntry, UserDb, verify_password
from ferryman.pipeline.context import ANONYMOUS, RequestContext
from ferryman.pipeline.stage import CONTINUE, Authenticate, Respond
from tests.helpers.fakeclock import FakeClock

PW = b"wonderland"
HASH = bcrypt.hashpw(PW, bcrypt.gensalt(4)).decode()
CHALLENGE = b'Basic realm="office", charset="UTF-8"'


def basic(user: bytes, pw: bytes) -> bytes:
    return b"Basic " + base64.b64encode(user + b":" + pw)


class Slot:
    def __init__(self, max_failures: int = 3) -> None:
        users = {"alice": PasswordEntry("alice", HASH, "bcrypt", 1)}
        db = UserDb.build(users, {"staff": frozenset({"alice"})})
        self.current: Authenticator | None = Authenticator(
            db, CredentialCache(60.0), FailureLimiter(max_failures, 60.0, 30.0)
        )
        self.time = monotonic


def ctx_for(
    headers: list[tuple[bytes, bytes]], method: str = "GET", keep_alive: bool = True
) -> RequestContext:
    target = b"origin.test:443" if method == "CONNECT" else b"http://origin.test/"
    head = RequestHead(
        method, target, "1.1", headers, Framing.NONE, 0, keep_alive, b"origin.test", frozenset(), False
    )
    ctx = RequestContext.__new__(RequestContext)
    ctx.client = SimpleNamespace(memo={})  # type: ignore[assignment]
    ctx.head = head
    ctx.client_ip = "192.0.2.7"
    ctx.identity = ANONYMOUS
    return ctx


def finish(slot: Slot, ctx: RequestContext, d: object) -> object:
    """What the connection does with an Authenticate decision (the check run inline)."""
    assert isinstance(d, Authenticate)
    return d.resume(ctx, d.step, verify_password(d.step.entry, d.step.password))


def test_no_credentials_goes_on_anonymously() -> None:
    ph = auth_phase.phase(Slot(), CHALLENGE)
    ctx = ctx_for([])
    assert ph(ctx) is CONTINUE
    assert ctx.identity is ANONYMOUS


def test_good_credentials_checked_once_then_cached() -> None:
    slot = Slot()
    ph = auth_phase.phase(slot, CHALLENGE)
    ctx = ctx_for([(b"Proxy-Authorization", basic(b"alice", PW))])
    d = ph(ctx)
    assert isinstance(d, Authenticate) and d.phase is ph
    assert finish(slot, ctx, d) is CONTINUE
    assert ctx.identity.user == "alice" and ctx.identity.groups == frozenset({"staff"})
    ctx2 = ctx_for([(b"proxy-authorization", basic(b"alice", PW))])
    assert ph(ctx2) is CONTINUE  # cache hit: no password check
    assert ctx2.identity.user == "alice"


def test_connection_memo_skips_the_cache_until_users_change() -> None:
    slot = Slot()
    ph = auth_phase.phase(slot, CHALLENGE)
    ctx = ctx_for([(b"Proxy-Authorization", basic(b"alice", PW))])
    assert finish(slot, ctx, ph(ctx)) is CONTINUE
    again = ctx_for([(b"Proxy-Authorization", basic(b"alice", PW))])
    again.client = ctx.client  # the same connection
    assert slot.current is not None
    slot.current.cache.clear()  # the memo answers without the cache
    assert ph(again) is CONTINUE and again.identity is ctx.identity
    other = ctx_for([(b"Proxy-Authorization", basic(b"alice", b"other"))])
    other.client = ctx.client  # other credentials on that connection: checked
    assert isinstance(ph(other), Authenticate)
    slot.current = Slot().current  # users re-read: the memo no longer applies
    third = ctx_for([(b"Proxy-Authorization", basic(b"alice", PW))])
    third.client = ctx.client
    assert isinstance(ph(third), Authenticate)


MALFORMED = [
    pytest.param(b"Basic !!!notbase64!!!", id="bad-base64"),
    pytest.param(b"Basic " + base64.b64encode(b"alicewonderland"), id="no-colon"),
    pytest.param(b"Basic " + base64.b64encode(b"alice:won\x00derland"), id="nul"),
    pytest.param(b"Basic " + base64.b64encode(b"alice:" + b"x" * 10_000), id="10KB"),
    pytest.param(b"Bearer abc", id="other-scheme"),
    pytest.param(b"Basic", id="no-token"),
    pytest.param(b"", id="empty"),
]


@pytest.mark.parametrize("value", MALFORMED)
def test_malformed_credentials_get_407_with_challenge(value: bytes) -> None:
    ph = auth_phase.phase(Slot(max_failures=100), CHALLENGE)
    d = ph(ctx_for([(b"Proxy-Authorization", value)]))
    assert isinstance(d, Respond) and d.status == 407 and d.error is None
    assert d.data.startswith(b"HTTP/1.1 407 Proxy Authentication Required\r\n")
    assert b"\r\nProxy-Authenticate: " + CHALLENGE + b"\r\n" in d.data
    assert b"Cache-Control: no-store" in d.data
    assert not d.close and b"Connection: close" not in d.data  # a GET keeps its connection


def test_field_twice_is_407() -> None:
    ph = auth_phase.phase(Slot(), CHALLENGE)
    good = basic(b"alice", PW)
    d = ph(ctx_for([(b"Proxy-Authorization", good), (b"Proxy-Authorization", good)]))
    assert isinstance(d, Respond) and d.status == 407


def test_unknown_user_and_wrong_password_407() -> None:
    slot = Slot(max_failures=100)
    ph = auth_phase.phase(slot, CHALLENGE)
    d = ph(ctx_for([(b"Proxy-Authorization", basic(b"mallory", PW))]))
    assert isinstance(d, Respond) and d.status == 407 and b"unknown proxy user" in d.data
    ctx = ctx_for([(b"Proxy-Authorization", basic(b"alice", b"guess"))])
    out = finish(slot, ctx, ph(ctx))
    assert isinstance(out, Respond) and out.status == 407 and b"wrong proxy password" in out.data
    assert ctx.identity is ANONYMOUS


def test_connect_refusal_closes() -> None:
    ph = auth_phase.phase(Slot(), CHALLENGE)
    d = ph(ctx_for([(b"Proxy-Authorization", b"Basic ???")], method="CONNECT"))
    assert isinstance(d, Respond) and d.status == 407 and d.close and b"Connection: close\r\n" in d.data


def test_failures_lock_the_client_out_with_429() -> None:
    slot = Slot(max_failures=3)
    ph = auth_phase.phase(slot, CHALLENGE)
    bad = [(b"Proxy-Authorization", basic(b"nobody", b"x"))]
    assert [ph(ctx_for(bad)).status for _ in range(2)] == [407, 407]  # type: ignore[union-attr]
    d = ph(ctx_for(bad))
    assert isinstance(d, Respond) and d.status == 429 and d.close
    assert b"\r\nRetry-After: 30\r\n" in d.data and d.data.count(b"Retry-After") == 1
    # locked: even the right password waits (no check is run)
    d = ph(ctx_for([(b"Proxy-Authorization", basic(b"alice", PW))]))
    assert isinstance(d, Respond) and d.status == 429
    # no credentials at all: not a failure, not locked out of anonymous access
    assert ph(ctx_for([])) is CONTINUE


def test_auth_switched_off_meanwhile() -> None:
    slot = Slot()
    ph = auth_phase.phase(slot, CHALLENGE)
    ctx = ctx_for([(b"Proxy-Authorization", basic(b"alice", PW))])
    d = ph(ctx)
    slot.current = None
    assert finish(slot, ctx, d) is CONTINUE


# -- usage per user ------------------------------------------------------------------------


def test_usage_table_is_bounded() -> None:
    t = UserUsage(max_users=2)
    t.add("alice", 10, 100)
    t.add("alice", 5, 50)
    t.add("bob", 1, 1)
    t.add("carol", 2, 2)  # the table is full: counted under OTHERS
    t.add("dave", 3, 3)
    snap = t.snapshot()
    assert snap["alice"] == {"requests": 2, "bytes_in": 15, "bytes_out": 150}
    assert snap[OTHERS] == {"requests": 2, "bytes_in": 5, "bytes_out": 5}
    assert list(snap)[0] == "alice" and len(t) == 3


# -- parent URLs with userinfo ---------------------------------------------------------------


def test_parent_url_userinfo() -> None:
    assert split_proxy_url("http://10.0.0.1:3129") == ("10.0.0.1", 3129, None)
    host, port, cred = split_proxy_url("http://us%40er:p%3Aw@parent.test/")
    assert (host, port) == ("parent.test", 3128)
    assert cred == b"Basic " + base64.b64encode(b"us@er:p:w")
    for bad in ("http://user@h:1", "http://:pw@h:1", "http://h:1/path", "https://h:1"):
        with pytest.raises(ValueError):
            split_proxy_url(bad)


# -- the worker's runtime: shared checks, file reloads ---------------------------------------


def write_users(path: Path, users: dict[str, bytes]) -> None:
    lines = (f"{u}:{bcrypt.hashpw(p, bcrypt.gensalt(4)).decode()}\n" for u, p in users.items())
    path.write_text("".join(lines))


def test_runtime_shares_one_check_per_credential(tmp_path: Path) -> None:
    write_users(tmp_path / "users", {"alice": PW})
    errors: list[str] = []
    ap = compile_auth({"htpasswd": "users"}, str(tmp_path), "forward.auth", errors)
    assert ap is not None and not errors

    async def main() -> tuple[list[bool], int]:
        rt = AuthRuntime(asyncio.get_running_loop(), FakeClock())
        rt.adopt(ap)
        assert rt.current is not None
        header = basic(b"alice", PW)
        steps = [rt.current.begin("127.0.0.1", header, 0.0) for _ in range(20)]
        assert all(isinstance(s, Verify) for s in steps)
        oks = await asyncio.gather(*(rt.verify(s) for s in steps))  # type: ignore[arg-type]
        rt.close()
        return list(oks), rt.checks

    oks, checks = asyncio.run(main())
    assert oks == [True] * 20 and checks == 1


def test_runtime_rereads_changed_files_and_keeps_old_users_on_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    users = tmp_path / "users"
    write_users(users, {"alice": PW})
    errors: list[str] = []
    ap = compile_auth({"htpasswd": str(users)}, str(tmp_path), "forward.auth", errors)
    assert ap is not None

    async def main() -> None:
        rt = AuthRuntime(asyncio.get_running_loop(), FakeClock())
        rt.adopt(ap)
        assert not await rt.reread(ap)  # unchanged
        write_users(users, {"alice": PW, "bob": b"builder"})
        assert rt.plan is not None
        assert await rt.reread(rt.plan)
        assert rt.current is not None and rt.current.db.get("bob") is not None
        users.write_text("bob plain-text-password\n")  # unusable: the users of before stay
        assert not await rt.reread(rt.plan)
        assert rt.current.db.get("bob") is not None
        assert not await rt.reread(rt.plan)  # said once per change
        rt.close()

    with caplog.at_level("WARNING", logger="ferryman"):
        asyncio.run(main())
    errs = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errs) == 1 and "keep serving" in errs[0] and f"{users}:1" in errs[0]


def test_runtime_bounds_pending_checks_and_the_phase_answers_503(tmp_path: Path) -> None:
    write_users(tmp_path / "users", {"alice": PW})
    errors: list[str] = []
    ap = compile_auth({"htpasswd": "users", "max_pending_checks": 2}, str(tmp_path), "forward.auth", errors)
    assert ap is not None and ap.max_pending_checks == 2

    async def main() -> None:
        rt = AuthRuntime(asyncio.get_running_loop(), FakeClock())
        rt.adopt(ap)
        assert rt.current is not None and rt.max_pending == 2
        steps = [rt.current.begin("127.0.0.1", basic(b"alice", b"guess%d" % i), 0.0) for i in range(3)]
        assert all(isinstance(s, Verify) for s in steps)
        a, b, c = (rt.verify(s) for s in steps)  # type: ignore[arg-type]
        twin = rt.verify(steps[0])  # type: ignore[arg-type]  # joins a check in flight: allowed
        got = await asyncio.gather(a, b, c, twin)
        assert got == [False, False, None, False]
        assert (rt.checks, rt.refused) == (2, 1)
        again = steps[2]
        assert isinstance(again, Verify)
        assert await rt.verify(again) is False  # room again once they finished
        status = rt.status()
        assert status is not None and status["password_checks_refused"] == 1
        rt.close()

        slot = Slot()
        phase = auth_phase.phase(slot, CHALLENGE)
        req = ctx_for([(b"Proxy-Authorization", basic(b"alice", b"x"))])
        d = phase(req)
        assert isinstance(d, Authenticate)
        busy = d.resume(req, d.step, None)
        assert isinstance(busy, Respond) and busy.status == 503 and busy.error is not None
        assert slot.current is not None and len(slot.current.limiter) == 0  # not a failure

    asyncio.run(main())
