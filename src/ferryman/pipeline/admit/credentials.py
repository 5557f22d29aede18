"""Proxy credentials (pure): ``Proxy-Authorization: Basic`` parsing, a cache of
verified credentials, a per-client failure limiter, and the steps of one check.

One check runs in two halves so that the bcrypt work can go off the event loop::

    step = auth.begin(client_ip, header_value, now)
    if isinstance(step, Verify):                    # cache miss: CPU work, off the loop
        ok = await loop.run_in_executor(None, verify_password, step.entry, step.password)
        step = auth.finish(client_ip, step, ok, now)
    # step is now Granted(user), Challenge() (-> 407) or Locked(retry_after) (-> 429)

Nothing here reads a clock, a file or a socket: ``now`` is passed in.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import math
import os
from collections import OrderedDict
from dataclasses import dataclass

from ferryman.pipeline.admit.htpasswd import PasswordEntry, UserDb

# A real Basic credential is tens of bytes; anything longer than this is refused
# before decoding (RFC 7617 sets no limit; Squid and Apache stop near 8 KB).
MAX_AUTHORIZATION = 4096


@dataclass(frozen=True, slots=True)
class BasicCredentials:
    user: str
    password: bytes  # bytes as sent: verification works on bytes, nothing is decoded


def parse_basic(value: bytes | str | None) -> BasicCredentials | None:
    """Credentials from a ``Proxy-Authorization`` value, or None when it is absent or
    unusable (another scheme, bad base64, no colon, a control character, too long).
    Never raises: every bad value ends in a 407 challenge."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = value.encode("latin-1")
        except UnicodeEncodeError:
            return None
    if len(value) > MAX_AUTHORIZATION:
        return None
    parts = value.strip().split(None, 1)
    if len(parts) != 2 or parts[0].lower() != b"basic":
        return None
    token = parts[1].strip()
    if not token or len(token) % 4:
        return None
    try:
        raw = binascii.a2b_base64(token, strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    user_b, sep, password = raw.partition(b":")
    if not sep or not user_b:
        return None
    # RFC 7617: neither part may hold control characters; NUL is refused outright.
    if any(b < 0x20 or b == 0x7F for b in user_b) or b"\x00" in password:
        return None
    try:
        user = user_b.decode("utf-8")
    except UnicodeDecodeError:
        user = user_b.decode("latin-1")
    return BasicCredentials(user, password)


class CredentialCache:
    """Recently verified credentials, so a keep-alive client costs one HMAC per request
    instead of one bcrypt, and no Base64 decoding either.

    The key is HMAC-SHA256, under a per-process random key, of the header value as
    sent: the plain password is never kept.  The value names the user and the hash
    the password was checked against; `Authenticator` takes a hit only while the user
    still has that very hash, so a reload that changes a password misses at once.
    Least recently used entries go first when ``max_entries`` is reached.  Mutable
    state: one per worker, shared by the Plans of successive reloads.
    """

    __slots__ = ("ttl", "max_entries", "_key", "_entries")

    def __init__(self, ttl: float, max_entries: int = 10_000, key: bytes | None = None) -> None:
        if ttl < 0 or max_entries < 0:
            raise ValueError("ttl and max_entries must not be negative")
        self.ttl = ttl
        self.max_entries = max_entries
        self._key = key if key is not None else os.urandom(32)
        # digest -> (expiry, user, hash)
        self._entries: OrderedDict[bytes, tuple[float, str, str]] = OrderedDict()

    def lookup(self, header: bytes, now: float) -> tuple[str, str] | None:
        """(user, hash) verified for this exact header value, while fresh."""
        if not self._entries:
            return None
        d = hmac.digest(self._key, header, hashlib.sha256)
        hit = self._entries.get(d)
        if hit is None:
            return None
        if hit[0] <= now:
            del self._entries[d]
            return None
        self._entries.move_to_end(d)
        return hit[1], hit[2]

    def store(self, header: bytes, entry: PasswordEntry, now: float) -> None:
        if self.ttl <= 0 or self.max_entries == 0:
            return
        d = hmac.digest(self._key, header, hashlib.sha256)
        self._entries[d] = (now + self.ttl, entry.user, entry.hash)
        self._entries.move_to_end(d)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class FailureLimiter:
    """After ``max_failures`` failed checks from one client within ``window`` seconds,
    that client is locked out for ``lockout`` seconds (default: ``window``).

    At most ``max_clients`` addresses are tracked; the least recently failing one is
    forgotten first, so memory stays bounded under a spray from many addresses.
    """

    __slots__ = ("max_failures", "window", "lockout", "max_clients", "_state")

    def __init__(
        self, max_failures: int, window: float, lockout: float | None = None, max_clients: int = 10_000
    ) -> None:
        if max_failures < 1 or window <= 0 or max_clients < 1:
            raise ValueError("max_failures, window and max_clients must be positive")
        self.max_failures = max_failures
        self.window = window
        self.lockout = window if lockout is None else lockout
        self.max_clients = max_clients
        # client -> [window start, failures in it, locked until]
        self._state: OrderedDict[str, list[float]] = OrderedDict()

    def retry_after(self, client: str, now: float) -> int:
        """0 when the client may try; else the whole seconds to send in Retry-After."""
        if not self._state:
            return 0
        st = self._state.get(client)
        if st is None or st[2] <= now:
            return 0
        return max(1, math.ceil(st[2] - now))

    def failure(self, client: str, now: float) -> int:
        """Record a failed check; returns `retry_after` after it (0 while not locked)."""
        st = self._state.get(client)
        if st is None or now - st[0] >= self.window:
            locked_until = st[2] if st is not None else 0.0
            st = [now, 0.0, locked_until]
            self._state[client] = st
        self._state.move_to_end(client)
        st[1] += 1
        if st[1] >= self.max_failures:
            st[2] = max(st[2], now + self.lockout)
            st[0], st[1] = now, 0.0  # a new window starts with the lockout
        while len(self._state) > self.max_clients:
            self._state.popitem(last=False)
        return self.retry_after(client, now)

    def success(self, client: str, now: float) -> None:
        """A good credential clears the client's failure count (not an active lockout)."""
        st = self._state.get(client)
        if st is not None and st[2] <= now:
            del self._state[client]
        elif st is not None:
            st[1] = 0.0

    def __len__(self) -> int:
        return len(self._state)


# -- the steps of one check --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Granted:
    user: str
    groups: frozenset[str]
    cached: bool  # True when no password hashing was needed


@dataclass(frozen=True, slots=True)
class Challenge:
    """Answer 407 with ``Proxy-Authenticate: Basic realm=...``."""

    reason: str  # "missing" | "invalid" | "unknown-user" | "bad-password", for the log


@dataclass(frozen=True, slots=True)
class Locked:
    """Answer 429 with ``Retry-After``."""

    retry_after: int


@dataclass(frozen=True, slots=True)
class Verify:
    """Run ``verify_password(entry, password)`` off the loop, then call `finish`."""

    entry: PasswordEntry
    password: bytes
    header: bytes  # the value as sent, for the cache


AuthStep = Granted | Challenge | Locked | Verify

MISSING = Challenge("missing")
INVALID = Challenge("invalid")
UNKNOWN_USER = Challenge("unknown-user")
BAD_PASSWORD = Challenge("bad-password")


class Authenticator:
    """One user database (one Plan) with the worker's cache and failure limiter."""

    __slots__ = ("db", "cache", "limiter", "_granted")

    def __init__(self, db: UserDb, cache: CredentialCache, limiter: FailureLimiter) -> None:
        self.db = db
        self.cache = cache
        self.limiter = limiter
        self._granted: dict[str, Granted] = {}  # user -> the Granted of a cache hit

    def begin(self, client: str, header: bytes | str | None, now: float) -> AuthStep:
        if header is None:
            return MISSING  # a browser's first try: not a failure
        wait = self.limiter.retry_after(client, now)
        if wait:
            return Locked(wait)
        if isinstance(header, str):
            try:
                header = header.encode("latin-1")
            except UnicodeEncodeError:
                return self._fail(client, now, INVALID)
        hit = self.cache.lookup(header, now)
        if hit is not None:
            entry = self.db.get(hit[0])
            if entry is not None and entry.hash == hit[1]:
                granted = self._granted.get(entry.user)
                if granted is None:
                    granted = Granted(entry.user, self.db.groups_of(entry.user), True)
                    self._granted[entry.user] = granted
                return granted
        creds = parse_basic(header)
        if creds is None:
            return self._fail(client, now, INVALID)
        entry = self.db.get(creds.user)
        if entry is None:
            return self._fail(client, now, UNKNOWN_USER)
        return Verify(entry, creds.password, header)

    def finish(self, client: str, step: Verify, ok: bool, now: float) -> Granted | Challenge | Locked:
        if not ok:
            return self._fail(client, now, BAD_PASSWORD)
        self.cache.store(step.header, step.entry, now)
        self.limiter.success(client, now)
        return Granted(step.entry.user, self.db.groups_of(step.entry.user), False)

    def _fail(self, client: str, now: float, challenge: Challenge) -> Challenge | Locked:
        wait = self.limiter.failure(client, now)
        return Locked(wait) if wait else challenge
