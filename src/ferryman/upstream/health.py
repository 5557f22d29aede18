"""Backend health (pure): active check verdicts and passive outlier ejection.

Two machines, fed by the caller and told the time (``now``, monotonic seconds);
neither runs a timer, sends a probe or looks at a clock.  The engine's health
checker calls ``ActiveHealth.observe`` with each probe result; the upstream
phase calls ``OutlierDetector.record`` with each request's outcome and
``expired`` on its periodic tick; the balancer asks ``PoolHealth``.

Active checks (nginx ``health_check`` / HAProxy ``rise``/``fall``)::

    state   observation  streak effect              leaves when streak reaches
    UP      ok           reset                      -
    UP      fail         +1                         fall  -> DOWN
    DOWN    ok           +1                         rise  -> UP
    DOWN    fail         reset                      -

  Servers start UP by default: a proxy that has just started (or reloaded)
  serves at once, and a dead backend is found within ``fall`` probes, as in
  nginx open source and HAProxy.  ``start_up=False`` starts a server DOWN
  until ``rise`` probes pass (nginx Plus ``mandatory``) for backends that must
  prove themselves before they take traffic.

Passive checks (Envoy outlier detection, nginx ``max_fails``/``fail_timeout``)::

    state      event                                   next
    AVAILABLE  outcome below the threshold             AVAILABLE
    AVAILABLE  ``failures`` within ``window``, cap ok  EJECTED for the ejection time
    AVAILABLE  threshold reached, cap full             AVAILABLE (history kept)
    EJECTED    outcome of a request already in flight  EJECTED (ignored)
    EJECTED    ``now >= until``, seen by ``expired``   AVAILABLE (history cleared)

  * Threshold: ``failures`` failures, the oldest no more than ``window``
    seconds before the newest.  By default a success clears the count
    (``consecutive=True``, Envoy's ``consecutive_5xx``): a busy server with a
    low error rate would otherwise cross any count-in-window threshold.
    ``consecutive=False`` gives nginx's ``max_fails`` (failures counted within
    the window whatever succeeded in between).  What counts as a failure
    (connect error, timeout, 5xx) is the caller's choice.
  * Ejection time: ``base_ejection * n``, at most ``max_ejection``, where ``n``
    counts this server's ejections.  ``n`` decays by one per ``base_ejection``
    seconds spent back in the pool (Envoy), so an old flap is forgiven.
  * Cap: at most ``floor(size * max_ejection_share)`` servers ejected at once,
    but at least one in a pool of two or more (as Envoy), so a small pool with
    a low share still sheds a broken server.  A pool of one is never ejected:
    passive ejection there only turns a flaky backend into a certain 503
    (active checks may still mark it DOWN).  ``max_ejection_share=0`` disables
    ejection.
  * Return: ``expired`` hands back the servers whose time is up; the caller
    applies slow start.  ``is_available`` already reports an expired server
    available even before ``expired`` has run.
  * Reload: a detector built for a new Plan ``adopt``s each staying server's
    state from the old one (ejection and its expiry, failures, ejection count),
    so a reload neither forgives nor prolongs anything.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final


class Health(enum.StrEnum):
    UP = "up"
    DOWN = "down"


# state -> (observation that moves toward leaving it, state it leads to); the
# opposite observation resets the streak.  Thresholds: UP uses fall, DOWN rise.
_FLIP: Final[dict[Health, tuple[bool, Health]]] = {
    Health.UP: (False, Health.DOWN),
    Health.DOWN: (True, Health.UP),
}


class Outlier(enum.StrEnum):
    AVAILABLE = "available"
    EJECTED = "ejected"


class _Event(enum.Enum):
    OUTCOME = enum.auto()  # a request result below the threshold
    THRESHOLD = enum.auto()  # the failure threshold reached and the cap allows
    CAPPED = enum.auto()  # the failure threshold reached, the cap is full
    EXPIRE = enum.auto()  # the ejection time is over


# Read on every request's outcome (`record`): on Python 3.11 an Enum class's attribute goes
# through EnumType.__getattr__'s slow hook, a module name does not.
_EJECTED: Final = Outlier.EJECTED

# (state, event) -> next state; a pair missing here cannot happen.
_OUTLIER: Final[dict[tuple[Outlier, _Event], Outlier]] = {
    (Outlier.AVAILABLE, _Event.OUTCOME): Outlier.AVAILABLE,
    (Outlier.AVAILABLE, _Event.THRESHOLD): Outlier.EJECTED,
    (Outlier.AVAILABLE, _Event.CAPPED): Outlier.AVAILABLE,
    (Outlier.EJECTED, _Event.OUTCOME): Outlier.EJECTED,
    (Outlier.EJECTED, _Event.EXPIRE): Outlier.AVAILABLE,
}


@dataclass(frozen=True, slots=True)
class Transition:
    """An active-check state change, for logs, metrics and the balancer."""

    old: Health
    new: Health
    at: float
    streak: int  # the consecutive observations that caused it


@dataclass(frozen=True, slots=True)
class Ejection:
    """A passive ejection: ``index`` is out of the pool from ``at`` until ``until``."""

    index: int
    at: float
    until: float
    times: int  # the (decayed) ejection count that set the duration


class ActiveHealth:
    """One server's active-check verdict: UP/DOWN with rise/fall hysteresis."""

    __slots__ = ("rise", "fall", "_state", "_streak", "_since")

    def __init__(self, rise: int, fall: int, *, start_up: bool = True, now: float = 0.0) -> None:
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be at least 1")
        self.rise = rise
        self.fall = fall
        self._state = Health.UP if start_up else Health.DOWN
        self._streak = 0
        self._since = now

    @property
    def state(self) -> Health:
        return self._state

    @property
    def is_up(self) -> bool:
        return self._state is Health.UP

    @property
    def since(self) -> float:
        """When the current state began (construction time for the first)."""
        return self._since

    def observe(self, ok: bool, now: float) -> Transition | None:
        """Record one probe result; a Transition when it flips the state."""
        toward, target = _FLIP[self._state]
        if ok is not toward:
            self._streak = 0
            return None
        self._streak += 1
        threshold = self.fall if self._state is Health.UP else self.rise
        if self._streak < threshold:
            return None
        change = Transition(self._state, target, now, self._streak)
        self._state, self._streak, self._since = target, 0, now
        return change


class _Server:
    __slots__ = ("state", "failures", "ejection", "times", "last_until")

    def __init__(self, failures: int) -> None:
        self.state = Outlier.AVAILABLE
        self.failures: deque[float] = deque(maxlen=failures)
        self.ejection: Ejection | None = None
        self.times = 0
        self.last_until = -math.inf


class OutlierDetector:
    """Passive ejection across one pool of ``size`` servers (see module doc)."""

    __slots__ = (
        "size",
        "failures",
        "window",
        "base_ejection",
        "max_ejection",
        "max_ejection_share",
        "consecutive",
        "cap",
        "_servers",
        "_back",
    )

    def __init__(
        self,
        size: int,
        failures: int,
        window: float,
        base_ejection: float,
        max_ejection_share: float,
        *,
        max_ejection: float = 300.0,
        consecutive: bool = True,
    ) -> None:
        if size < 0 or failures < 1:
            raise ValueError("size must be >= 0 and failures >= 1")
        if not (window > 0 and base_ejection > 0 and max_ejection >= base_ejection):
            raise ValueError("window and base_ejection must be > 0, max_ejection >= base_ejection")
        if not 0.0 <= max_ejection_share <= 1.0:
            raise ValueError("max_ejection_share must be within [0, 1]")
        self.size = size
        self.failures = failures
        self.window = window
        self.base_ejection = base_ejection
        self.max_ejection = max_ejection
        self.max_ejection_share = max_ejection_share
        self.consecutive = consecutive
        cap = math.floor(size * max_ejection_share + 1e-9)  # 10 * 0.3 is 2.9999...
        if cap == 0 and size >= 2 and max_ejection_share > 0:
            cap = 1
        self.cap = cap
        self._servers = [_Server(failures) for _ in range(size)]
        self._back: list[int] = []  # returned, not yet reported by ``expired``

    def record(self, index: int, ok: bool, now: float) -> Ejection | None:
        """Record one request outcome of server ``index``; an Ejection when it ejects."""
        s = self._servers[index]
        if s.state is _EJECTED:  # (a module name: Outlier.EJECTED is slow to read, see _EJECTED)
            if s.ejection is not None and now < s.ejection.until:
                self._step(s, _Event.OUTCOME)
                return None
            self._return(index)  # over; ``expired`` will still report it
        if ok:
            if self.consecutive:
                s.failures.clear()
            return None
        s.failures.append(now)
        if len(s.failures) < self.failures or now - s.failures[0] > self.window:
            self._step(s, _Event.OUTCOME)
            return None
        if self.ejected_count(now) >= self.cap:
            self._step(s, _Event.CAPPED)
            return None
        decayed = int((now - s.last_until) // self.base_ejection) if s.last_until > -math.inf else 0
        s.times = max(0, s.times - decayed) + 1
        duration = min(self.base_ejection * s.times, self.max_ejection)
        s.ejection = Ejection(index, now, now + duration, s.times)
        s.failures.clear()
        self._step(s, _Event.THRESHOLD)
        if index in self._back:  # returned unreported and out again: it never came back
            self._back.remove(index)
        return s.ejection

    def expired(self, now: float) -> list[int]:
        """Servers back in the pool since the last call (ascending), each reported once.

        Includes a server whose return ``record`` noticed first, so the caller's
        slow start never misses one.
        """
        for i, s in enumerate(self._servers):
            if s.state is Outlier.EJECTED and s.ejection is not None and now >= s.ejection.until:
                self._return(i)
        back, self._back = sorted(self._back), []
        return back

    def is_available(self, index: int, now: float) -> bool:
        e = self._servers[index].ejection
        return e is None or now >= e.until

    def ejection(self, index: int, now: float) -> Ejection | None:
        """The ejection in force for ``index`` at ``now``, if any."""
        e = self._servers[index].ejection
        return e if e is not None and now < e.until else None

    def adopt(self, index: int, old: OutlierDetector, old_index: int) -> None:
        """Take over server ``old_index``'s passive state from ``old`` (a reload built this
        detector; the server is ``index`` here): its ejection and expiry, failures so far,
        ejection count and decay, and a return not yet reported by ``expired``, so the
        server comes back exactly when it would have without the reload.  ``old`` is
        not used for that server afterwards."""
        src, dst = old._servers[old_index], self._servers[index]
        dst.state = src.state
        dst.failures = deque(src.failures, maxlen=self.failures)  # the newest, if fewer now
        e = src.ejection
        dst.ejection = None if e is None else Ejection(index, e.at, e.until, e.times)
        dst.times = src.times
        dst.last_until = src.last_until
        if old_index in old._back and index not in self._back:
            self._back.append(index)

    def ejected_count(self, now: float) -> int:
        return sum(1 for s in self._servers if s.ejection is not None and now < s.ejection.until)

    def _return(self, index: int) -> None:
        s = self._servers[index]
        assert s.ejection is not None
        s.last_until = s.ejection.until
        s.ejection = None
        s.failures.clear()
        self._step(s, _Event.EXPIRE)
        self._back.append(index)

    @staticmethod
    def _step(s: _Server, event: _Event) -> None:
        s.state = _OUTLIER[(s.state, event)]


class PoolHealth:
    """The balancer's view: a server is available when active checks say UP
    (or none are configured) and it is not ejected.

    It only reports.  What to do when nothing is available (fail with 503, or
    Envoy-style panic routing to every server) is the balancer's policy.
    """

    __slots__ = ("size", "active", "outlier")

    def __init__(
        self,
        size: int,
        active: Sequence[ActiveHealth] | None = None,
        outlier: OutlierDetector | None = None,
    ) -> None:
        if (active is not None and len(active) != size) or (outlier is not None and outlier.size != size):
            raise ValueError("active checks and outlier detector must cover the pool's size")
        self.size = size
        self.active = tuple(active) if active is not None else None
        self.outlier = outlier

    def is_available(self, index: int, now: float) -> bool:
        if self.active is not None and not self.active[index].is_up:
            return False
        return self.outlier is None or self.outlier.is_available(index, now)

    def available(self, now: float) -> list[int]:
        """Indexes of the available servers, ascending."""
        return [i for i in range(self.size) if self.is_available(i, now)]
