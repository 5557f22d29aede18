"""ADMIT phase (forward): who is the client?  ``Proxy-Authorization: Basic``.

Rules this phase owns:
- a request without ``Proxy-Authorization`` goes on anonymously: the rules phase
  asks for credentials (407) where a rule with the ``auth`` action matches (with
  ``forward.auth`` and no such rule, the first rule asks for them everywhere);
- a request that carries credentials is checked whatever the rules say: a wrong,
  unknown or malformed credential (bad base64, no colon, a NUL byte, too long, the
  field twice) is answered 407 with the realm's challenge, never 400 or 500;
- a client locked out by the failure limiter is answered 429 with Retry-After;
- a credential that would need a password check while the worker has too many
  waiting already (`conn/auth.py`) is answered 503 with Retry-After, unchecked (not a
  failure: the limiter does not count it);
- a 407 or 429 says why in the access log's error field (``Respond.why``), as
  refusals from the error table do;
- a credential seen recently costs one HMAC (the worker's cache); anything else is a
  password check (bcrypt: milliseconds), which the connection runs off the event
  loop (`Authenticate`) and hands back to `resume` here, on the loop;
- a granted user fills ``ctx.identity`` (rules on users and groups, the access log,
  usage per user).

The users come from `AuthSlot.current`: the Plan's, or newer ones read when the
files changed (`conn/auth.py` watches them); the cache and the limiter are the
worker's and outlive reloads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast

from ferryman.errors import AuthBusy, ProxyAuthRequired, RateLimited
from ferryman.http1.events import Framing, RequestHead
from ferryman.pipeline import respond
from ferryman.pipeline.admit.credentials import Authenticator, Challenge, Granted, Locked, Verify
from ferryman.pipeline.context import Identity, RequestContext
from ferryman.pipeline.stage import CONTINUE, Authenticate, Decision, Phase, Respond

DEFAULT_CHALLENGE = b'Basic realm="ferryman", charset="UTF-8"'
_FIELD = b"proxy-authorization"
_FIELD_LEN = len(_FIELD)

# The log's error field for each challenge reason.
_WHY = {
    "missing": "proxy authentication required",
    "invalid": "malformed Proxy-Authorization",
    "unknown-user": "unknown proxy user",
    "bad-password": "wrong proxy password",
}


_BUSY = "too many proxy password checks pending; credentials not checked, try again"


class AuthSlot(Protocol):
    """Where the phase finds the current users (the worker's `conn.auth.AuthRuntime`)
    and the connections' clock (``time``, `conn/clock.py`)."""

    @property
    def current(self) -> Authenticator | None: ...

    @property
    def time(self) -> Callable[[], float]: ...


def credentials_of(head: RequestHead) -> bytes | None:
    """The ``Proxy-Authorization`` value, None when absent, b"" when sent twice."""
    value = None
    for name, v in head.headers:
        if len(name) == _FIELD_LEN and name.lower() == _FIELD:
            value = v if value is None else b""
    return value


def must_close(head: RequestHead) -> bool:
    """Whether a refusal must end the connection: after CONNECT the parser has handed
    the stream to a tunnel, an unread body would be read as a request, and the client
    may have asked for it."""
    return (
        head.method == "CONNECT" or not head.keep_alive
        or (head.framing is not Framing.NONE and head.content_length != 0)
    )


class Challenges:
    """The 407 and 429 answers of one realm, the 407s built once (two variants:
    keep-alive, close); each names its reason for the log (``Respond.why``)."""

    __slots__ = ("header", "_keep", "_close")

    def __init__(self, header: bytes) -> None:
        self.header = header
        self._keep: dict[str, Respond] = {}
        self._close: dict[str, Respond] = {}
        for reason, why in _WHY.items():
            exc = ProxyAuthRequired(why)
            self._keep[reason] = Respond(407, respond.challenge(exc, header, False), why=why)
            self._close[reason] = Respond(407, respond.challenge(exc, header, True), close=True, why=why)

    def challenge(self, head: RequestHead, reason: str) -> Respond:
        answers = self._close if must_close(head) else self._keep
        d = answers.get(reason)
        return d if d is not None else answers["missing"]

    def locked(self, head: RequestHead, retry_after: int) -> Respond:
        exc = RateLimited(f"too many failed proxy logins from this address; retry in {retry_after}s")
        data = respond.retry_later(exc, retry_after, close=True)
        return Respond(429, data, close=True, why=exc.detail)


def outcome(ctx: RequestContext, step: Granted | Challenge | Locked, answers: Challenges) -> Decision:
    """The decision for a finished check."""
    if type(step) is Granted:
        ctx.identity = Identity(step.user, step.groups)
        return CONTINUE
    if type(step) is Locked:
        return answers.locked(ctx.head, step.retry_after)
    assert isinstance(step, Challenge)
    return answers.challenge(ctx.head, step.reason)


class _Seen:
    """What a connection was last granted with (its memo entry)."""

    __slots__ = ("auth", "value", "until", "identity")

    def __init__(self, auth: Authenticator, value: bytes, until: float, identity: Identity) -> None:
        self.auth = auth
        self.value = value
        self.until = until
        self.identity = identity


def phase(slot: AuthSlot, challenge_header: bytes) -> Phase:
    """The auth phase of a Plan with ``forward.auth``.

    A keep-alive connection that sends the credentials it was granted with again is
    answered from the connection's memo (one bytes comparison, no HMAC), while the same
    users are loaded (a reload or a changed file makes a new `Authenticator`), for at
    most ``cache_ttl``, and unless its address is locked out meanwhile."""
    answers = Challenges(challenge_header)
    clock = slot.time  # monotonic seconds in production (the builtin: no frame per read)

    def granted(
        ctx: RequestContext, auth: Authenticator, value: bytes, step: Granted, now: float
    ) -> Decision:
        ident = ctx.identity = Identity(step.user, step.groups)
        ttl = auth.cache.ttl
        if ttl > 0:
            ctx.client.memo[authenticate] = _Seen(auth, value, now + ttl, ident)
        return CONTINUE

    def resume(ctx: RequestContext, step: Verify, ok: bool | None) -> Decision:
        auth = slot.current
        if auth is None:  # auth was switched off meanwhile: nothing to check against
            return CONTINUE
        if ok is None:  # not checked: too many checks pending in this worker
            return Respond.refuse(AuthBusy(_BUSY))  # a new one: a raised error keeps its traceback
        entry = auth.db.get(step.entry.user)
        if entry is None or entry.hash != step.entry.hash:
            # the users were reloaded during the check and this one changed: ask again
            return answers.challenge(ctx.head, "unknown-user")
        now = clock()
        done = auth.finish(ctx.client_ip, step, ok, now)
        if type(done) is Granted:
            return granted(ctx, auth, step.header, done, now)
        return outcome(ctx, done, answers)

    def authenticate(ctx: RequestContext) -> Decision:
        value = credentials_of(ctx.head)
        if value is None:
            return CONTINUE  # anonymous: the rules ask for credentials where they need them
        auth = slot.current
        if auth is None:
            return CONTINUE
        now = clock()
        seen = cast("_Seen | None", ctx.client.memo.get(authenticate))
        if (
            seen is not None and seen.auth is auth and seen.value == value
            and now < seen.until and not auth.limiter.retry_after(ctx.client_ip, now)
        ):
            ctx.identity = seen.identity
            return CONTINUE
        step = auth.begin(ctx.client_ip, value, now)
        if type(step) is Verify:
            return Authenticate(step, resume, authenticate)
        if type(step) is Granted and isinstance(value, bytes):
            return granted(ctx, auth, value, step, now)
        return outcome(ctx, step, answers)  # type: ignore[arg-type]

    return authenticate
