"""Plan types of the forward proxy's admit phases (issue 12), built once per Plan by
`config.compile_forward_control` and read by the phases.

- `AuthPlan`: the users and the auth settings.  The credential cache and the failure
  limiter are per-worker state that outlives a reload: make them once with
  `AuthPlan.new_state` and pass them to every new `Authenticator`.
- `ForwardControl`: everything the forward admit phases need, in one value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ferryman.pipeline.admit.anonymity import AnonymityPolicy
from ferryman.pipeline.admit.credentials import Authenticator, CredentialCache, FailureLimiter
from ferryman.pipeline.admit.htpasswd import FileStamp, UserDb
from ferryman.pipeline.admit.rules import RuleSet
from ferryman.pipeline.admit.safety import SsrfGuard


@dataclass(frozen=True, slots=True)
class AuthPlan:
    db: UserDb
    realm: str
    cache_ttl: float
    cache_size: int
    max_failures: int
    failure_window: float
    lockout: float
    reload_check: float  # seconds between two looks at the files' mtimes
    stamps: tuple[FileStamp, ...]
    max_pending_checks: int | None = None  # checks waiting or running; None: the runtime's default
    # Reads the files again into a new AuthPlan, or None with the reasons appended to
    # the list when they cannot be used (set by config/, which knows the settings).
    reread: Callable[[list[str]], AuthPlan | None] | None = field(default=None, compare=False, repr=False)

    @property
    def paths(self) -> tuple[str, ...]:
        """The files the users come from (htpasswd, group file)."""
        return tuple(s[0] for s in self.stamps)

    @property
    def challenge(self) -> bytes:
        """The ``Proxy-Authenticate`` value of a 407."""
        return b'Basic realm="' + self.realm.encode("latin-1") + b'", charset="UTF-8"'

    def new_state(self) -> tuple[CredentialCache, FailureLimiter]:
        return (
            CredentialCache(self.cache_ttl, self.cache_size),
            FailureLimiter(self.max_failures, self.failure_window, self.lockout),
        )

    def authenticator(self, cache: CredentialCache, limiter: FailureLimiter) -> Authenticator:
        return Authenticator(self.db, cache, limiter)

    def files_changed(self, now_stamps: tuple[FileStamp, ...]) -> bool:
        """Whether a fresh stat of the same files shows a change (reload them then)."""
        return now_stamps != self.stamps


@dataclass(frozen=True, slots=True)
class ForwardControl:
    auth: AuthPlan | None
    rules: RuleSet
    safety: SsrfGuard
    anonymity: AnonymityPolicy
    pac: str  # the PAC file's text
    log_query: bool  # keep query strings in the access log
