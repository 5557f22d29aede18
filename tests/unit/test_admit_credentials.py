"""Proxy-Authorization parsing, the credential cache, the failure limiter, one check."""

from __future__ import annotations

import base64

import bcrypt
import pytest

from ferryman.pipeline.admit.credentials import (
    BAD_PASSWORD,
    INVALID,
    MISSING,
    UNKNOWN_USER,
    Authenticator,
    BasicCredentials,
    Challenge,
    CredentialCache,
    FailureLimiter,
    Granted,
    Locked,
    Verify,
    parse_basic,
)
from ferryman.pipeline.admit.htpasswd import PasswordEntry, UserDb, verify_password


def basic(raw: bytes) -> bytes:
    return b"Basic " + base64.b64encode(raw)


# -- parse_basic ----------------------------------------------------------------------


def test_parse_basic_good_values() -> None:
    assert parse_basic(basic(b"alice:s3cret")) == BasicCredentials("alice", b"s3cret")
    assert parse_basic("  bAsIc   " + base64.b64encode(b"a:b").decode() + " ") == BasicCredentials("a", b"b")
    # colons after the first belong to the password; an empty password is a credential
    assert parse_basic(basic(b"a:b:c")) == BasicCredentials("a", b"b:c")
    assert parse_basic(basic(b"a:")) == BasicCredentials("a", b"")
    assert parse_basic(basic("jérôme:pässword".encode())) == BasicCredentials("jérôme", "pässword".encode())
    assert parse_basic(basic("j\xe9r\xf4me:x".encode("latin-1"))) == BasicCredentials("jérôme", b"x")


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"Basic",
        b"Basic ",
        b"Bearer " + base64.b64encode(b"a:b"),
        b"Digest username=\"a\"",
        b"Basic !!!!",  # not base64
        b"Basic YWJj",  # "abc": no colon
        b"Basic YWI6Y",  # bad padding
        b"Basic YWI6Yw",  # missing padding
        b"Basic YW I6Yw==",
        basic(b":password"),  # empty user
        basic(b"a\x00:b"),
        basic(b"a:b\x00c"),
        basic(b"a\r\nb:c"),
        basic(b"a\x7f:b"),
        b"Basic " + base64.b64encode(b"a:" + b"x" * 8000),  # ~10 KB
        b"Basic " + b"A" * 10240,
        "Basic \u20ac",  # not latin-1 encodable
    ],
)
def test_parse_basic_refuses_without_raising(value: bytes | str | None) -> None:
    assert parse_basic(value) is None


# -- CredentialCache -----------------------------------------------------------------


def entry(user: str = "alice", h: str = "$2y$04$" + "a" * 53) -> PasswordEntry:
    return PasswordEntry(user, h, "bcrypt")


def test_cache_hits_until_ttl_and_never_stores_the_password() -> None:
    c = CredentialCache(ttl=60)
    e = entry()
    hdr = basic(b"alice:pw-is-not-kept")
    assert c.lookup(hdr, 0) is None
    c.store(hdr, e, 0)
    assert c.lookup(hdr, 59.9) == ("alice", e.hash)
    assert c.lookup(basic(b"alice:other"), 1) is None
    assert c.lookup(hdr, 60.0) is None
    assert len(c) == 0  # the expired entry went on lookup
    c.store(hdr, e, 0)
    [(digest, value)] = c._entries.items()
    assert b"pw-is-not-kept" not in digest and hdr not in digest
    assert all(b"pw-is-not-kept" not in str(v).encode() for v in value)


def test_cache_is_bounded_lru() -> None:
    c = CredentialCache(ttl=60, max_entries=3)
    hdrs = [basic(f"u{i}:pw".encode()) for i in range(5)]
    for i, h in enumerate(hdrs[:3]):
        c.store(h, entry(f"u{i}"), 0)
    assert c.lookup(hdrs[0], 1) is not None  # u0 is now the most recent
    c.store(hdrs[3], entry("u3"), 1)
    c.store(hdrs[4], entry("u4"), 1)
    assert len(c) == 3
    assert c.lookup(hdrs[0], 2) is not None
    assert c.lookup(hdrs[1], 2) is None
    assert c.lookup(hdrs[2], 2) is None


def test_cache_with_zero_ttl_stores_nothing() -> None:
    c = CredentialCache(ttl=0)
    c.store(basic(b"a:b"), entry(), 0)
    assert len(c) == 0


# -- FailureLimiter ------------------------------------------------------------------


def test_limiter_locks_after_n_failures_in_window() -> None:
    lim = FailureLimiter(max_failures=3, window=10, lockout=30)
    assert lim.failure("10.0.0.1", 0) == 0
    assert lim.failure("10.0.0.1", 1) == 0
    assert lim.retry_after("10.0.0.1", 1) == 0
    assert lim.failure("10.0.0.1", 2) == 30
    assert lim.retry_after("10.0.0.1", 2.5) == 30  # ceil(29.5)
    assert lim.retry_after("10.0.0.2", 2.5) == 0  # other clients unaffected
    assert lim.retry_after("10.0.0.1", 31.9) == 1
    assert lim.retry_after("10.0.0.1", 32) == 0


def test_limiter_window_expires_old_failures() -> None:
    lim = FailureLimiter(max_failures=2, window=10)
    assert lim.failure("c", 0) == 0
    assert lim.failure("c", 10) == 0  # the first failure's window is over
    assert lim.failure("c", 11) == 10


def test_limiter_success_clears_the_count() -> None:
    lim = FailureLimiter(max_failures=2, window=10)
    lim.failure("c", 0)
    lim.success("c", 1)
    assert lim.failure("c", 2) == 0
    assert len(lim) == 1


def test_limiter_memory_is_bounded() -> None:
    lim = FailureLimiter(max_failures=2, window=10, max_clients=100)
    for i in range(10_000):
        lim.failure(f"10.0.{i // 256}.{i % 256}", i * 0.001)
    assert len(lim) == 100


# -- Authenticator -------------------------------------------------------------------


@pytest.fixture(scope="module")
def alice_hash() -> str:
    return bcrypt.hashpw(b"wonderland", bcrypt.gensalt(4)).decode()


def make_auth(alice_hash: str, max_failures: int = 3) -> Authenticator:
    users = {"alice": PasswordEntry("alice", alice_hash, "bcrypt")}
    db = UserDb.build(users, {"staff": frozenset({"alice"})})
    return Authenticator(db, CredentialCache(ttl=300), FailureLimiter(max_failures, window=60))


def run(auth: Authenticator, client: str, header: bytes | None, now: float) -> object:
    step = auth.begin(client, header, now)
    if isinstance(step, Verify):
        return auth.finish(client, step, verify_password(step.entry, step.password), now)
    return step


def test_authenticator_verifies_then_serves_from_cache(alice_hash: str) -> None:
    auth = make_auth(alice_hash)
    good = basic(b"alice:wonderland")
    first = auth.begin("c", good, 0)
    assert isinstance(first, Verify)
    assert auth.finish("c", first, verify_password(first.entry, first.password), 0) == Granted(
        "alice", frozenset({"staff"}), False
    )
    assert auth.begin("c", good, 1) == Granted("alice", frozenset({"staff"}), True)
    assert auth.begin("c", good.decode(), 2) == Granted("alice", frozenset({"staff"}), True)
    assert isinstance(auth.begin("c", basic(b"alice:wonderlanD"), 2), Verify)
    assert isinstance(auth.begin("c", good, 301), Verify)  # TTL over


def test_a_changed_password_hash_misses_the_cache(alice_hash: str) -> None:
    """A reload gives alice a new hash: the cached header no longer grants anything."""
    auth = make_auth(alice_hash)
    good = basic(b"alice:wonderland")
    assert isinstance(run(auth, "c", good, 0), Granted)
    assert auth.begin("c", good, 1) == Granted("alice", frozenset({"staff"}), True)
    new_hash = bcrypt.hashpw(b"looking-glass", bcrypt.gensalt(4)).decode()
    reloaded = Authenticator(
        UserDb.build({"alice": PasswordEntry("alice", new_hash, "bcrypt")}), auth.cache, auth.limiter
    )
    assert isinstance(reloaded.begin("c", good, 2), Verify)
    assert run(reloaded, "c", good, 2) == BAD_PASSWORD
    gone = Authenticator(UserDb.build({}), auth.cache, auth.limiter)
    assert gone.begin("c", basic(b"alice:looking-glass"), 3) == UNKNOWN_USER


def test_authenticator_challenges_and_locks(alice_hash: str) -> None:
    auth = make_auth(alice_hash, max_failures=3)
    assert run(auth, "c", None, 0) == MISSING
    assert run(auth, "c", None, 0) == MISSING  # a missing header is not a failure
    assert run(auth, "c", b"Basic ###", 0) == INVALID
    assert run(auth, "c", basic(b"mallory:x"), 1) == UNKNOWN_USER
    assert run(auth, "c", basic(b"alice:wrong"), 2) == Locked(60)
    # even the right password waits out the lockout, without any hashing
    assert auth.begin("c", basic(b"alice:wonderland"), 3) == Locked(59)
    assert isinstance(run(auth, "d", basic(b"alice:wonderland"), 3), Granted)
    assert isinstance(run(auth, "c", basic(b"alice:wonderland"), 62), Granted)
    assert isinstance(run(auth, "c", basic(b"alice:nope"), 63), Challenge)
    assert run(auth, "c", basic(b"alice:nope"), 63) == BAD_PASSWORD


def test_parse_basic_never_raises_on_random_input() -> None:
    import random

    rnd = random.Random(3)
    alphabet = b"Basic ABCabc012+/=:\x00\xff \t"
    for _ in range(3000):
        n = rnd.choice([0, 1, 5, 12, 40, 200, 5000])
        raw = bytes(rnd.choice(alphabet) for _ in range(n))
        for value in (raw, b"Basic " + raw, b"Basic " + base64.b64encode(raw)):
            result = parse_basic(value)
            assert result is None or isinstance(result, BasicCredentials)
