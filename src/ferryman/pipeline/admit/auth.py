"""ADMIT phase (forward): who is the client?  ``Proxy-Authorization: Basic``.

Rules this phase owns:
- a request without ``Proxy-Authorization`` goes on anonymously: the rules phase
  asks for credentials (407) where a rule with the ``auth`` action matches (with
  ``forward.auth`` and no such rule, the first rule asks for them everywhere);
- a request that carries credentials is checked whatever the rules say: a wrong,
  unknown or malformed credential (bad base64, no colon, a NUL byte, too long, the
  field twice) is answered 407 with the realm's challenge, never 400 or 500;
- a client locked out by the failure limiter is answered 429 with Retry-After;
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

from time import monotonic
from typing import Protocol, cast

from ferryman.errors import ProxyAuthRequired, RateLimited
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


class AuthSlot(Protocol):
    """Where the phase finds the current users (the worker's `conn.auth.AuthRuntime`)."""

    @property
    def current(self) -> Authenticator | None: ...


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
    """The 407 and 429 answers of one realm, built once (two variants: keep-alive, close)."""

    __slots__ = ("header", "_keep", "_close")

    def __init__(self, header: bytes) -> None:
        self.header = header
        self._keep: dict[str, bytes] = {}
        self._close: dict[str, bytes] = {}
        for reason, why in _WHY.items():
            exc = ProxyAuthRequired(why)
            self._keep[reason] = respond.challenge(exc, header, close=False)
            self._close[reason] = respond.challenge(exc, header, close=True)

    def challenge(self, head: RequestHead, reason: str) -> Respond:
        close = must_close(head)
        data = (self._close if close else self._keep).get(reason)
        if data is None:
            data = respond.challenge(ProxyAuthRequired(_WHY["missing"]), self.header, close)
        return Respond(407, data, close=close)

    def locked(self, head: RequestHead, retry_after: int) -> Respond:
        exc = RateLimited(f"too many failed proxy logins from this address; retry in {retry_after}s")
        return Respond(429, respond.retry_later(exc, retry_after, close=True), close=True)


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

    def granted(
        ctx: RequestContext, auth: Authenticator, value: bytes, step: Granted, now: float
    ) -> Decision:
        ident = ctx.identity = Identity(step.user, step.groups)
        ttl = auth.cache.ttl
        if ttl > 0:
            ctx.client.memo[authenticate] = _Seen(auth, value, now + ttl, ident)
        return CONTINUE

    def resume(ctx: RequestContext, step: Verify, ok: bool) -> Decision:
        auth = slot.current
        if auth is None:  # auth was switched off meanwhile: nothing to check against
            return CONTINUE
        entry = auth.db.get(step.entry.user)
        if entry is None or entry.hash != step.entry.hash:
            # the users were reloaded during the check and this one changed: ask again
            return answers.challenge(ctx.head, "unknown-user")
        now = monotonic()
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
        now = monotonic()
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
