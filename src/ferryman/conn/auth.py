"""The worker's proxy-authentication state, at the asyncio edge.

- The credential cache and the failure limiter are made once per worker and
  kept across reloads (`AuthPlan.new_state`); each Plan (or each re-read of the
  files) gets a new `Authenticator` over them (`current`).
- Password checks run in a small thread pool (bcrypt releases the GIL), never on
  the event loop.  Identical credentials checked at the same time share one
  check: a burst of connections opened with the same new credentials costs one
  bcrypt, not one each.
- At most ``max_pending_checks`` distinct checks wait or run at once (default:
  `PENDING_PER_THREAD` per thread of the pool); a credential beyond that is not
  checked at all (`verify` says None: the phase answers 503 at once), so a spray
  of distinct wrong passwords cannot queue seconds of bcrypt in front of real
  users.  Joining a check already in flight is always allowed (it costs nothing).
- Times are read from the connections' clock (`conn/clock.py`), so the fake clock
  of the protocol tests drives the file watch and the phase's cache and limiter.
- The htpasswd and group files are looked at (stat, off the loop) at most every
  ``reload_check`` seconds; when one changed they are read again
  (`AuthPlan.reread`, which config/ provides).  A file that cannot be used keeps the users already loaded and
  says why in the log, once per change.  A full reload (SIGHUP, POST /reload)
  reads them as part of the new Plan; a bad file refuses that reload.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from ferryman.conn.clock import Clock
from ferryman.pipeline.admit.control import AuthPlan
from ferryman.pipeline.admit.credentials import Authenticator, CredentialCache, FailureLimiter, Verify
from ferryman.pipeline.admit.htpasswd import file_stamps, verify_password

log = logging.getLogger("ferryman")

PENDING_PER_THREAD = 8  # default cap on checks queued or running, per thread of the pool


def check_threads() -> int:
    """Threads of the password-check pool (bcrypt is CPU work: no more than the cores)."""
    return min(4, os.cpu_count() or 1)


class AuthRuntime:
    __slots__ = (
        "loop", "time", "plan", "current", "cache", "limiter", "_source", "_executor", "_inflight",
        "_next_check", "_watch", "checks", "refused", "max_pending",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Clock) -> None:
        self.loop = loop
        self.time = clock.time  # the connections' clock: the phase reads it too (`AuthSlot`)
        self.plan: AuthPlan | None = None  # the users in force: the Plan's, or re-read since
        self.current: Authenticator | None = None
        self.cache: CredentialCache | None = None
        self.limiter: FailureLimiter | None = None
        self._source: AuthPlan | None = None  # the Plan's own AuthPlan
        self._executor: ThreadPoolExecutor | None = None
        self._inflight: dict[tuple[bytes, str], asyncio.Future[bool]] = {}
        self._next_check = 0.0
        self._watch: asyncio.Task[None] | None = None
        self.checks = 0  # password checks run (not cache hits), for /status and tests
        self.refused = 0  # credentials not checked: too many checks pending
        self.max_pending = PENDING_PER_THREAD * check_threads()

    # ------------------------------------------------------------- plans
    def adopt(self, ap: AuthPlan | None) -> None:
        """A new Plan: its users (read with it) replace whatever was loaded before."""
        if ap is self._source:
            return
        self._source = ap
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if ap is None:
            self.plan = self.current = None
            return
        if self.cache is None or self.limiter is None:
            self.cache, self.limiter = ap.new_state()
        else:  # keep what was learnt; take the new settings
            self.cache.ttl, self.cache.max_entries = ap.cache_ttl, ap.cache_size
            lim = self.limiter
            lim.max_failures, lim.window, lim.lockout = ap.max_failures, ap.failure_window, ap.lockout
        self._use(ap)

    def _use(self, ap: AuthPlan) -> None:
        assert self.cache is not None and self.limiter is not None
        self.plan = ap
        self.current = ap.authenticator(self.cache, self.limiter)
        self.max_pending = ap.max_pending_checks or PENDING_PER_THREAD * check_threads()
        self._next_check = self.time() + ap.reload_check

    # ------------------------------------------------------------- checks
    async def verify(self, step: Verify) -> bool | None:
        """Check a password off the loop; concurrent checks of one credential share one.
        None: not checked, ``max_pending`` checks are waiting or running already."""
        key = (step.header, step.entry.hash)
        fut = self._inflight.get(key)
        if fut is None:
            if len(self._inflight) >= self.max_pending:
                self.refused += 1
                return None
            if self._executor is None:
                self._executor = ThreadPoolExecutor(check_threads(), thread_name_prefix="ferryman-auth")
            self.checks += 1
            fut = self._inflight[key] = self.loop.run_in_executor(
                self._executor, verify_password, step.entry, step.password
            )
            fut.add_done_callback(lambda _f: self._inflight.pop(key, None))
        # shield: one waiter going away (its client left) must not cancel the others' check
        return await asyncio.shield(fut)

    # ------------------------------------------------------------- file watch
    def tick(self) -> None:
        """Called about once a second: look at the files when ``reload_check`` is due."""
        ap = self.plan
        if ap is None or self._watch is not None:
            return
        now = self.time()
        if now < self._next_check:
            return
        self._next_check = now + ap.reload_check
        self._watch = self.loop.create_task(self._look(ap))

    async def _look(self, ap: AuthPlan) -> None:
        try:
            await self.reread(ap)
        finally:
            self._watch = None

    async def reread(self, ap: AuthPlan) -> bool:
        """Read the files again if their stamps changed; True when new users are in force."""
        source = self._source
        stamps = await self.loop.run_in_executor(None, file_stamps, list(ap.paths))
        if not ap.files_changed(stamps):
            return False
        if ap.reread is None:
            return False
        errors: list[str] = []
        new = await self.loop.run_in_executor(None, ap.reread, errors)
        if source is not self._source or ap is not self.plan:
            return False  # a reload came in meanwhile: its users win
        if new is None:
            log.error(
                "ferryman: proxy users not reloaded, the ones loaded before keep serving: %s",
                "; ".join(errors),
            )
            self.plan = replace(ap, stamps=stamps)  # say it once per change, not every look
            return False
        self._use(new)
        log.warning(
            "ferryman: proxy users reloaded from %s (%d users)", ", ".join(new.paths), len(new.db.users)
        )
        return True

    def status(self) -> dict[str, int] | None:
        """For /status: users loaded, cached credentials, password checks run and refused
        (too many pending), clients with failures on record."""
        if self.plan is None:
            return None
        return {
            "users": len(self.plan.db.users),
            "cached_credentials": len(self.cache or ()),
            "password_checks": self.checks,
            "password_checks_refused": self.refused,
            "clients_failing": len(self.limiter or ()),
        }

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
